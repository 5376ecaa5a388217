"""Loading a user's local weight file into a model: safetensors, or torch files read with `weights_only=True`
(never arbitrary pickle), checked tensor by tensor so a mismatch is one sentence, not a traceback."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from harness.errors import UserError


def load_state_dict(path: Path, net: nn.Module, what: str, hint: str = "",
                    aliases: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """The state dict in `path`, with `net`'s names and shapes (a `state_dict` wrapper and DataParallel's
    `module.` prefixes are accepted). `what` names the weights in messages; `hint` says what to check;
    `aliases` maps another code base's name prefixes to `net`'s (e.g. `{"fc_end.": "head."}`)."""
    if not path.is_file():
        raise UserError(f"{what} weights file {path} does not exist; set `weights` to a local .safetensors or .pt "
                        "file.")
    try:
        state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                                  weights_only=True)
    except Exception as exc:  # unreadable or unsafe content
        raise UserError(f"{what} weights file {path} cannot be read as a state dict ({type(exc).__name__}); "
                        "export it with safetensors or torch.save(model.state_dict()).") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{what} weights file {path} holds a {type(state).__name__}, not a state dict.")
    state = {_renamed(k.removeprefix("module."), aliases or {}): v for k, v in state.items()}
    wrong = [k for k, v in net.state_dict().items() if k not in state or tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise UserError(f"{what} weights file {path} does not match the configured model ({len(wrong)} tensors "
                        f"missing or of another shape, e.g. '{wrong[0]}'){hint}.")
    return state


def _renamed(key: str, aliases: dict[str, str]) -> str:
    for prefix, ours in aliases.items():
        if key.startswith(prefix):
            return ours + key[len(prefix):]
    return key
