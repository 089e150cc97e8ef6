"""bltjax.hub.from_hub on the local fixtures: the download function is injected, no network."""

import pathlib

import numpy as np
import pytest

from bltjax import hub

DATA = pathlib.Path(__file__).parent / "data"


class FakeHub:
    """Stands in for ``huggingface_hub.snapshot_download``: repo id -> a local fixture directory."""

    def __init__(self, repos: dict[str, pathlib.Path]):
        self.repos, self.calls = repos, []

    def __call__(self, **kwargs) -> str:
        self.calls.append(kwargs)
        return str(self.repos[kwargs["repo_id"]])


def test_release_layout_with_entropy_model(expected):
    fake = FakeHub({"facebook/blt-1b": DATA / "tiny-entropy"})
    model = hub.from_hub("facebook/blt-1b", download=fake, revision="main", cache_dir="/nowhere")
    assert fake.calls == [{"repo_id": "facebook/blt-1b", "revision": "main", "cache_dir": "/nowhere"}]
    assert model.source == "release" and model.config.patcher.mode == "entropy"
    toks = expected["batch_tokens"]
    np.testing.assert_array_equal(model.patch(toks), expected["batch_patch_lengths"])
    np.testing.assert_allclose(model.logits(toks), expected["batch_logits"], atol=1e-5, rtol=1e-5)


def test_hf_layout_and_conversion(tmp_path):
    with np.load(DATA / "hf-tiny" / "expected.npz") as z:
        hf_expected = dict(z)
    fake = FakeHub({"itazap/blt-1b-hf": DATA / "hf-tiny"})
    out = tmp_path / "converted"
    model = hub.from_hub("itazap/blt-1b-hf", download=fake, convert_to=out)
    assert model.source == "bltjax" and (out / "metadata").exists()
    toks = hf_expected["batch_tokens"]
    np.testing.assert_array_equal(model.patch(toks), hf_expected["batch_patch_lengths_hf_raw"])
    np.testing.assert_allclose(model.logits(toks), hf_expected["batch_logits"], atol=1e-5, rtol=1e-5)
    # converted once: the next call loads the bltjax copy without downloading
    assert hub.from_hub("itazap/blt-1b-hf", download=fake, convert_to=out).source == "bltjax"
    assert len(fake.calls) == 1


def test_separate_entropy_repository(tmp_path, expected):
    """A snapshot without entropy_model/: the entropy model comes from entropy_repo_id."""
    blt = tmp_path / "blt-only"
    blt.mkdir()
    for name in ("params.json", "consolidated.pth"):
        (blt / name).symlink_to(DATA / "tiny-entropy" / name)
    fake = FakeHub({"facebook/blt-1b": blt, "facebook/blt-entropy": DATA / "tiny-entropy" / "entropy_model"})
    with pytest.raises(FileNotFoundError, match="entropy model"):
        hub.from_hub("facebook/blt-1b", download=fake)
    model = hub.from_hub("facebook/blt-1b", entropy_repo_id="facebook/blt-entropy", download=fake)
    np.testing.assert_array_equal(model.patch(expected["batch_tokens"]), expected["batch_patch_lengths"])


def test_bad_repo_id():
    with pytest.raises(ValueError, match="owner/name"):
        hub.from_hub("blt-1b", download=FakeHub({}))
