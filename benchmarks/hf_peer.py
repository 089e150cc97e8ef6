"""Peer worker for ``benchmarks/train_step.py --peer hf``: Hugging Face ``BltForCausalLM`` on the CPU.

Runs in its own interpreter (one where ``torch`` and ``transformers`` are installed, e.g. a Python 3.11
venv with ``pip install torch transformers``); it does not import bltjax.  It reads one JSON request
per line on stdin and writes one JSON reply per line on stdout, so that the bltjax process can drive it
round by round and the two are never timed at the same time:

    {"cmd": "setup", "config": {BltConfig kwargs}, "tokens": [[...]], "targets": [[...]],
     "patch_lengths": [[...]], "optim": {"lr", "betas", "eps", "weight_decay", "clip"}, "threads": T,
     "seed": S}                         -> {"ok": true, "params": n, "torch": v, "transformers": v}
    {"cmd": "train", "steps": k}        -> {"ok": true, "times": [k seconds], "loss": last loss}
    {"cmd": "forward", "steps": k}      -> {"ok": true, "times": [k seconds]}
    {"cmd": "quit"}                     -> {"ok": true}   (then exits)

A failed request is answered ``{"ok": false, "error": "..."}``.  Train step: ``model.train()``, forward,
mean cross-entropy on ``targets``, backward, ``clip_grad_norm_``, AdamW (``fused=True``), ``zero_grad``.
Forward: ``model.eval()`` under ``torch.inference_mode()``, logits only.
"""

from __future__ import annotations

import json
import sys
import time


class HFPeer:
    def __init__(self, req: dict) -> None:
        import torch
        import transformers
        from transformers import BltConfig, BltForCausalLM

        self.torch = torch
        torch.set_num_threads(int(req["threads"]))
        torch.manual_seed(int(req.get("seed", 0)))
        self.model = BltForCausalLM._from_config(BltConfig(**req["config"]),
                                                 attn_implementation=req.get("attn_implementation", "sdpa"))
        self.tokens = torch.tensor(req["tokens"], dtype=torch.long)
        self.targets = torch.tensor(req["targets"], dtype=torch.long)
        self.patch_lengths = torch.tensor(req["patch_lengths"], dtype=torch.long)
        o = req["optim"]
        self.clip = float(o["clip"])
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                                     weight_decay=o["weight_decay"], fused=True)
        self.info = {"params": sum(p.numel() for p in self.model.parameters()), "torch": torch.__version__,
                     "transformers": transformers.__version__, "threads": torch.get_num_threads()}

    def logits(self):
        return self.model(input_ids=self.tokens, patch_lengths=self.patch_lengths, use_cache=False).logits

    def train_step(self) -> float:
        torch = self.torch
        self.model.train()
        logits = self.logits()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    def forward(self) -> None:
        self.model.eval()
        with self.torch.inference_mode():
            self.logits()

    def timed(self, fn, steps: int) -> tuple[list[float], object]:
        times, out = [], None
        for _ in range(steps):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return times, out


def handle(peer: HFPeer | None, req: dict) -> tuple[HFPeer | None, dict]:
    cmd = req.get("cmd")
    if cmd == "setup":
        peer = HFPeer(req)
        return peer, {"ok": True, **peer.info}
    if cmd == "quit":
        return peer, {"ok": True}
    if peer is None:
        raise RuntimeError(f"'{cmd}' before 'setup'")
    if cmd == "train":
        times, loss = peer.timed(peer.train_step, int(req["steps"]))
        return peer, {"ok": True, "times": times, "loss": loss}
    if cmd == "forward":
        times, _ = peer.timed(peer.forward, int(req["steps"]))
        return peer, {"ok": True, "times": times}
    raise ValueError(f"unknown cmd {cmd!r}")


def main() -> int:
    peer = None
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            peer, reply = handle(peer, req)
        except Exception as e:  # noqa: BLE001 -- reported to the driver, which stops with the message
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if req.get("cmd") == "quit":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
