"""What every module of the config package builds on: the ``Section`` base model,
:class:`FieldError`, and small helpers on types and values. Imports nothing of the project."""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo

#: where an option or a section sits: ``("rate_limit", "burst")``, ``("plugins", "poll")``
KeyPath = tuple[str, ...]


class FieldError(ValueError):
    """Raised by a model validator to blame one of the model's fields: the error's key path
    then ends with ``key`` (``server.pong_wait: ...`` rather than ``server: ...``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class StrictModel(BaseModel):
    """The rules every config model follows, the core's sections and the plugins' alike:
    frozen, a section left empty in YAML (``presence:`` with nothing under it) takes its
    defaults, numbers are finite and ``true`` is not a number."""

    model_config = ConfigDict(frozen=True, validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_defaults(cls, data: Any) -> Any:
        return {} if data is None else data

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            kind = optional_of(cls.model_fields[info.field_name].annotation)
            if kind is int or kind is float:
                noun = "an integer" if kind is int else "a number"
                raise ValueError(f"must be {noun}, got {describe(value)}")
        return value


class Section(StrictModel):
    """Base for every core config section: unknown keys are kept aside for warnings."""

    model_config = ConfigDict(extra="allow")


def optional_of(annotation: Any) -> Any:
    """``X`` for ``X | None`` and for ``Annotated[X, ...]``; anything else unchanged."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            annotation = args[0]
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def describe(value: Any) -> str:
    """A value as an operator wrote it: YAML's null, true and false; strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)


def keys_of(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """The fields of ``model`` by the key a YAML file spells them with (the alias, if any)."""
    return {info.alias or name: info for name, info in model.model_fields.items()}
