"""Checkpoint I/O: torch ``.pth`` (without torch), safetensors, official release and HF layouts."""

from bltjax.io.hf import bundle_to_hf_state_dict, config_from_hf, hf_state_dict_to_bundle, read_hf_dir
from bltjax.io.release import (
                               config_from_params_json,
                               entropy_config_from_params_json,
                               params_to_state_dict,
                               state_dict_to_params,
)
from bltjax.io.safetensors_np import load_safetensors, load_safetensors_dir
from bltjax.io.torch_pth import load_torch_pth

__all__ = ["load_torch_pth", "load_safetensors", "load_safetensors_dir", "config_from_params_json",
           "entropy_config_from_params_json", "state_dict_to_params", "params_to_state_dict", "config_from_hf",
           "hf_state_dict_to_bundle", "bundle_to_hf_state_dict", "read_hf_dir"]
