"""Where each editing tool looks for a layer's covariance cache: one naming rule per family.

Every tool of the ROME family computes the path in its own copy of ``rome/layer_stats.py``::

    {stats_dir}/{model_name}/{ds_name}_stats/{layer_name}_{precision}_mom2{size_suffix}.npz

and they differ in two places only:

- the model folder: ROME, MEMIT and EasyEdit before May 2024 take ``config._name_or_path``
  with ``/`` → ``_``; AlphaEdit and EasyEdit since then take its last ``/`` component;
- the size suffix: ``_{sample_size}``, preceded by ``_t{batch_tokens}`` whenever
  ``layer_stats`` is called with ``batch_tokens`` below the model's context length. That
  prefix is a plain string, not an f-string, in every one of these repositories, so the file
  name carries the eight characters ``{batch_tokens}`` literally, whatever the number was.

The dataset behind ``ds_name = "wikipedia"`` differs too (ROME ``20200501.en``, MEMIT and
EasyEdit until June 2026 ``20220301.en``, current EasyEdit ``wikimedia/wikipedia``
``20231101.en``, which is kisstore's ``--corpus wikipedia``); it does not enter the path.
Pure: names in, names out.
"""

from __future__ import annotations

from dataclasses import dataclass

from kisstore.errors import InputError
from kisstore.interop import rome_format as fmt

TOKEN_INFIX = "_t{batch_tokens}"  # literal: the tools never format it


@dataclass(frozen=True)
class NamingRule:
    """One way the tools name a cache file."""

    name: str
    last_component: bool  # model folder: last component of _name_or_path (else "/" → "_")
    token_infix: bool  # the literal ``_t{batch_tokens}`` before the size suffix
    readers: str  # who looks up files named this way
    dataset: str  # what their ``mom2_dataset: wikipedia`` loads

    def model_folder(self, name_or_path: str) -> str:
        if self.last_component:
            return fmt.last_component_name(name_or_path)
        return fmt.model_dir_name(name_or_path)

    def file_name(self, layer_name: str, precision: str, sample_size: int | None) -> str:
        size = "" if sample_size is None else f"_{sample_size}"
        infix = TOKEN_INFIX if self.token_infix else ""
        return f"{layer_name}_{precision}_mom2{infix}{size}.npz"


ROME = NamingRule("rome", False, False, "ROME, MEMIT, EasyEdit before 2024-05-28",
                  "wikipedia 20200501.en (ROME), 20220301.en (MEMIT)")
MEMIT = NamingRule("memit", False, True,
                   "ROME's, MEMIT's and their forks' layer_stats called with batch_tokens below the context "
                   "(e.g. `python -m rome.layer_stats --batch_tokens 1024`)", "wikipedia 20220301.en (MEMIT)")
EASYEDIT = NamingRule("easyedit", True, False, "EasyEdit (since 2024-05-28) and AlphaEdit",
                      "wikimedia/wikipedia 20231101.en (EasyEdit since 2026-06), 20200501.en (AlphaEdit)")
EASYEDIT_TOKENS = NamingRule("easyedit-t", True, True,
                             "EasyEdit's and AlphaEdit's layer_stats called with batch_tokens below the context",
                             EASYEDIT.dataset)

FORMATS: dict[str, tuple[NamingRule, ...]] = {
    "rome": (ROME,),
    "memit": (MEMIT,),
    "easyedit": (EASYEDIT,),
    "all": (ROME, MEMIT, EASYEDIT, EASYEDIT_TOKENS),
}
COVARIANCE_FORMATS = tuple(FORMATS)


def rules_for(format_name: str) -> tuple[NamingRule, ...]:
    try:
        return FORMATS[format_name]
    except KeyError:
        raise InputError(f"unknown --format {format_name!r}: use one of {', '.join(FORMATS)} "
                         "(or alphaedit for the null-space projector)") from None
