"""torchvision state dicts converted for cnnlab's models, checked tensor by tensor.

Where cnnlab's network computes what torchvision's does, only the tensor names differ:
`convert_torchvision_state_dict` renames every tensor by the family's rules
(torchvision_names.py) and checks the result against the cnnlab model built on the meta device
(every torchvision tensor used once, every cnnlab tensor filled, shapes equal); anything else is
one `CnnlabError` listing the unmatched keys, the unfilled ones and the shape mismatches, and the
models the tensors would fit. `load_torchvision_state_dict` gives the loaded model;
torchvision_import.py writes a weights file of it (`cnnlab import-weights`).

- `num_batches_tracked`, absent from torchvision's older files, only matters for BatchNorm
  without momentum: a missing one is set to 0. The class count is the file's classifier's.
- DenseNet files name dense-layer tensors `norm.1` ... `conv.2` (the old spelling, in the files
  torchvision downloads) or `norm1` ... `conv2`: both are read.
- GoogLeNet and Inception-v3 are built with `torchvision_compat=True`, torchvision's network,
  which gives torchvision's outputs; `accept_differences` builds cnnlab's default network
  instead, which follows the paper where torchvision does not (e.g. to fine-tune it from these
  weights), and records how its outputs differ.
- A file with auxiliary heads builds the model with them (`aux_logits`), one without, without.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.interop.torchvision_names import (
    FAMILIES,
    Family,
    Rename,
    family_for,
    supported_models,
)
from cnnlab.models import create_model

BATCH_COUNTER = "num_batches_tracked"
LISTED = 12  # keys shown per kind of problem in an error


@dataclass
class ConvertedWeights:
    """A torchvision state dict renamed for the cnnlab model `model` built with `options`."""

    model: str
    num_classes: int
    options: dict
    state_dict: dict[str, torch.Tensor]
    counters_set: int  # num_batches_tracked buffers absent from the file, set to 0
    difference: str | None = None  # how the cnnlab network built computes otherwise

    def build(self) -> nn.Module:
        """The cnnlab model holding these weights, in eval mode."""
        with torch.device("meta"):  # no initialisation: every tensor is assigned below
            model = create_model(self.model, num_classes=self.num_classes, **self.options)
        model.load_state_dict(self.state_dict, assign=True)
        return model.eval()


def convert_torchvision_state_dict(
    model_name: str, state_dict: Mapping[str, torch.Tensor], accept_differences: bool = False
) -> ConvertedWeights:
    """Rename a torchvision state dict for the cnnlab model `model_name`, built as torchvision's
    network (GoogLeNet and Inception-v3 with `torchvision_compat=True`), or with
    `accept_differences` as cnnlab's default network, whose outputs then differ from
    torchvision's. Refuses (one CnnlabError) keys that match nothing, cnnlab tensors left
    empty and other shapes."""
    family = family_for(model_name)
    check_state_dict(state_dict)
    converted = _try_convert(model_name, family, state_dict, default_network=accept_differences)
    if isinstance(converted, list):
        fits = [name for name in supported_models() if _fits(name, state_dict)]
        if fits:
            raise CnnlabError(
                f"these tensors are not torchvision's {model_name} but its {' or '.join(fits)}: "
                f"convert them as that model (--model {fits[0]})"
            )
        raise CnnlabError(
            f"these tensors are not torchvision's {model_name}: {'; '.join(converted)}"
        )
    converted.difference = family.difference if accept_differences else None
    return converted


def load_torchvision_state_dict(
    model_name: str, state_dict: Mapping[str, torch.Tensor], accept_differences: bool = False
) -> nn.Module:
    """The cnnlab model `model_name` holding a torchvision state dict's weights, in eval mode:
    torchvision's network, or cnnlab's default with `accept_differences` (see
    `convert_torchvision_state_dict`)."""
    return convert_torchvision_state_dict(model_name, state_dict, accept_differences).build()


def check_state_dict(state_dict: Mapping) -> None:
    """Refuse (one CnnlabError) what is not a non-empty dict of named tensors."""
    if not isinstance(state_dict, Mapping) or not state_dict:
        found = "an empty dict" if isinstance(state_dict, Mapping) else type(state_dict).__name__
        raise CnnlabError(f"expected a state dict (a dict of named tensors), found {found}")
    odd = [
        f"{key!r} ({type(value).__name__})"
        for key, value in state_dict.items()
        if not isinstance(key, str) or not isinstance(value, torch.Tensor)
    ]
    if odd:
        raise CnnlabError(
            "expected a state dict (a dict of named tensors), but these entries are not tensors: "
            f"{_listing(odd)}; if this is a training checkpoint, save its model's state_dict alone"
        )


def _fits(model_name: str, state_dict: Mapping[str, torch.Tensor]) -> bool:
    return not isinstance(_try_convert(model_name, FAMILIES[model_name], state_dict), list)


def _try_convert(
    model_name: str,
    family: Family,
    state_dict: Mapping[str, torch.Tensor],
    default_network: bool = False,
) -> ConvertedWeights | list[str]:
    """The converted weights for torchvision's network (or with `default_network`, cnnlab's
    default where the two differ), or the list of problems."""
    renamed, unmatched, twice = _rename_all(family.rename, state_dict)
    options: dict = {}
    if family.aux_prefix is not None:
        options["aux_logits"] = any(key.startswith(family.aux_prefix) for key in state_dict)
    if family.difference is not None and not default_network:
        options["torchvision_compat"] = True
    classifier = renamed.get(f"{family.classifier}.weight")
    fits = classifier is not None and state_dict[classifier].dim() == 2
    num_classes = state_dict[classifier].shape[0] if fits else 1000
    with torch.device("meta"):
        expected = create_model(model_name, num_classes=num_classes, **options).state_dict()
    unmatched += [source for target, source in renamed.items() if target not in expected]
    missing = [k for k in expected if k not in renamed and not k.endswith(BATCH_COUNTER)]
    misshapen = [
        f"{source} {tuple(state_dict[source].shape)} for {target} {tuple(expected[target].shape)}"
        for target, source in renamed.items()
        if target in expected and state_dict[source].shape != expected[target].shape
    ]
    retyped = [
        f"{source} ({state_dict[source].dtype})"
        for target, source in renamed.items()
        if target in expected
        and state_dict[source].is_floating_point() != expected[target].is_floating_point()
    ]
    problems = [
        f"{label}: {_listing(keys)}"
        for label, keys in (
            ("torchvision keys with no counterpart in cnnlab's model", unmatched),
            ("keys renamed onto a tensor another key fills", twice),
            ("cnnlab tensors no key fills", missing),
            ("shape mismatches (torchvision key, shape, cnnlab tensor, shape)", misshapen),
            ("float tensors for integer ones or the reverse", retyped),
        )
        if keys
    ]
    if problems:
        return problems
    weights, counters = {}, 0
    device = next(iter(state_dict.values())).device  # the weights stay where they are
    for key, value in expected.items():
        if key in renamed:
            weights[key] = state_dict[renamed[key]].detach().to(dtype=value.dtype, copy=True)
        else:  # a num_batches_tracked the file lacks
            weights[key] = torch.zeros((), dtype=value.dtype, device=device)
            counters += 1
    return ConvertedWeights(model_name, num_classes, options, weights, counters)


def _rename_all(
    rename: Rename, state_dict: Mapping[str, torch.Tensor]
) -> tuple[dict[str, str], list[str], list[str]]:
    """cnnlab key -> torchvision key, the keys no rule renames, and the keys renamed onto a
    cnnlab key that an earlier one took (a file holding both spellings of a DenseNet layer)."""
    renamed: dict[str, str] = {}
    unmatched, twice = [], []
    for key in state_dict:
        module, _, leaf = key.rpartition(".")
        new_module = rename(module)
        if new_module is None:
            unmatched.append(key)
        elif f"{new_module}.{leaf}" in renamed:
            twice.append(f"{key} (as {renamed[f'{new_module}.{leaf}']})")
        else:
            renamed[f"{new_module}.{leaf}"] = key
    return renamed, unmatched, twice


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:LISTED])
    return shown if len(items) <= LISTED else f"{shown} and {len(items) - LISTED} more"
