"""Experts: read and validate `registry/*.yaml`, resolve adapters and paths, look experts up.

A `Registry` is an in-memory, read-only view; persistence lives in `coe.store`. A pool is addressed
by its registry file, by the name it was imported under (`coe registry import FILE --name NAME`) or by
a bundled pool's name (`embedded`); `load_pool` validates all three the same way.
"""

from __future__ import annotations

import types
import typing
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from coe.errors import LiteralSecretWarning, RegistryError, UnknownExpertError
from coe.resources import bundled_pools
from coe.schema import ExpertSpec, LitellmBackendSpec, RegistryFile, mask_secret

if TYPE_CHECKING:
    from coe.store import Store


def load_registry_file(path: Path, data_dir: Path | None = None) -> list[ExpertSpec]:
    """Validate a registry file; relative paths resolve against the file's folder, then `data_dir`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise RegistryError(f"{path}: no such registry file; see `coe registry pools`") from error
    except IsADirectoryError as error:
        raise RegistryError(f"{path}: a folder, not a registry file (YAML with an `experts:` list)") from error
    except UnicodeDecodeError as error:
        raise RegistryError(f"{path}: not a text file; a registry file is YAML with an `experts:` list") from error
    except OSError as error:
        raise RegistryError(f"{path}: cannot read it: {error}") from error
    except yaml.YAMLError as error:
        raise RegistryError(f"{path}: not valid YAML: {error}") from error
    try:
        parsed = RegistryFile.model_validate(raw)
    except ValidationError as error:
        raise RegistryError(describe_validation_error(path, error, raw)) from error
    experts = [_resolve_paths(expert, path.parent, data_dir) for expert in parsed.experts]
    _warn_of_literal_keys(experts, path)
    return resolve_adapters(experts, where=str(path))


def _warn_of_literal_keys(experts: Sequence[ExpertSpec], path: Path) -> None:
    for expert in experts:
        if isinstance(expert.backend, LitellmBackendSpec) and expert.backend.api_key is not None:
            masked = mask_secret(expert.backend.api_key.get_secret_value())
            warnings.warn(
                f"{path}: expert {expert.id!r} has a literal api_key: coe stores and prints it only masked "
                f"({masked}), so the copy imported into the database cannot call the model; "
                "write `api_key_env: NAME` instead and export the key as NAME",
                LiteralSecretWarning,
                stacklevel=3,
            )


def resolve_adapters(experts: Sequence[ExpertSpec], where: str = "the registry") -> list[ExpertSpec]:
    """Give each adapter expert its base expert's backend; a missing base is an error."""
    by_id = {expert.id: expert for expert in experts}
    resolved = []
    for expert in experts:
        if expert.is_adapter:
            base = by_id.get(expert.base)
            if base is None:
                raise RegistryError(
                    f"{where}: expert {expert.id!r}: adapter base {expert.base!r} is not an expert "
                    f"of this registry; known: {', '.join(sorted(by_id))}"
                )
            if base.is_adapter:
                raise RegistryError(f"{where}: expert {expert.id!r}: base {base.id!r} is itself an adapter")
            if expert.backend is None:
                expert = expert.model_copy(update={"backend": base.backend})
            elif expert.backend != base.backend:
                raise RegistryError(
                    f"{where}: expert {expert.id!r}: an adapter runs on its base's backend; "
                    f"drop `backend` or make it equal to {base.id!r}'s"
                )
            if expert.resources is None:
                expert = expert.model_copy(update={"resources": base.resources})
            if "context" not in expert.model_fields_set:
                expert = expert.model_copy(update={"context": base.context})
            elif expert.context != base.context:
                raise RegistryError(
                    f"{where}: expert {expert.id!r}: an adapter runs on its base's model, so with its context: "
                    f"context {expert.context} here, but base {base.id!r} runs with {base.context}; drop `context`"
                )
        resolved.append(expert)
    _check_shared_resources(resolved, where)
    return resolved


def _check_shared_resources(experts: Sequence[ExpertSpec], where: str) -> None:
    """Experts on one model (a base, its adapters, its prompt variants) share one Ray actor, so the
    ones that declare `resources` declare the same."""
    declared: dict[tuple[str, str], ExpertSpec] = {}
    for expert in experts:
        if expert.resources is None or expert.backend is None:
            continue
        first = declared.setdefault((expert.backend_kind, expert.load_key), expert)
        if first.resources != expert.resources:
            raise RegistryError(
                f"{where}: experts {first.id!r} and {expert.id!r} run on one model, so on one Ray actor, "
                "but declare different `resources`; declare them once, equal, or on one of them"
            )


def _resolve_paths(expert: ExpertSpec, folder: Path, data_dir: Path | None) -> ExpertSpec:
    def resolve(value: Path) -> Path:
        if value.is_absolute():
            return value
        candidates = [folder / value] + ([data_dir / value] if data_dir else [])
        found = next((c for c in candidates if c.exists()), candidates[0])
        return found.resolve()

    update: dict[str, Any] = {}
    if expert.adapter is not None:
        update["adapter"] = resolve(expert.adapter)
    backend = expert.backend
    if backend is not None:
        for field in ("gguf", "responses"):
            value = getattr(backend, field, None)
            if value is not None:
                backend = backend.model_copy(update={field: resolve(value)})
        update["backend"] = backend
    return expert.model_copy(update=update)


# --------------------------------------------------------------------------- error messages


def describe_validation_error(
    path: Path | str, error: ValidationError, raw: Any = None, model: type[BaseModel] = RegistryFile
) -> str:
    """One line per problem: file, field path (with the expert's id), what is wrong, what is allowed."""
    lines = []
    for problem in error.errors():
        loc = problem["loc"]
        where = _format_loc(loc, raw)
        if problem["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1], model)
            what = f"unknown key {loc[-1]!r}" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif problem["type"] == "missing":
            what = "required field is missing"
        else:
            what = f"{problem['msg']} (got {problem.get('input')!r})"
        lines.append(f"{path}: {where}: {what}")
    return "\n".join(lines) + "\nfix the file and try again; nothing was written"


def _format_loc(loc: tuple[Any, ...], raw: Any) -> str:
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            node = node[item] if isinstance(node, list) and item < len(node) else None
            if isinstance(node, dict) and "id" in node:
                label += f" (id {node['id']!r})"
            parts.append(label)
        else:
            if isinstance(node, dict) and item not in node and item in _BACKEND_TAGS:
                continue  # a discriminator tag pydantic adds to the path, not a key in the file
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def _allowed_keys(loc: Sequence[Any], root: type[BaseModel]) -> list[str]:
    model: Any = root
    items = list(loc)
    while items:
        item = items.pop(0)
        if isinstance(item, int):
            continue
        if isinstance(model, dict):
            model = model.get(item)
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(str(item))
        if field is None:
            return []
        model = _unwrap(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """The model inside list[...]/Optional[...]; a tag -> model dict for a tagged union."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (list, tuple):
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if len(models) == 1:
            return models[0]
        return {m.model_fields["kind"].default: m for m in models if "kind" in m.model_fields}
    return annotation


_BACKEND_TAGS = {"embedded", "litellm", "vllm", "replay"}


# --------------------------------------------------------------------------- the registry


class Registry(Mapping[str, ExpertSpec]):
    """Experts by id, in declaration order; lookups of unknown ids name the known ones."""

    def __init__(self, experts: Iterable[ExpertSpec], source: str = "the registry") -> None:
        self._experts = {expert.id: expert for expert in resolve_adapters(list(experts), source)}
        self.source = source

    @classmethod
    def from_file(cls, path: Path, data_dir: Path | None = None) -> Registry:
        return cls(load_registry_file(path, data_dir), source=str(Path(path).resolve()))

    def __getitem__(self, expert_id: str) -> ExpertSpec:
        try:
            return self._experts[expert_id]
        except KeyError:
            raise UnknownExpertError(expert_id, self._experts, self.source) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._experts)

    def __len__(self) -> int:
        return len(self._experts)

    @property
    def experts(self) -> list[ExpertSpec]:
        return list(self._experts.values())

    def subset(self, expert_ids: Iterable[str]) -> Registry:
        """A registry of the named experts plus the bases their adapters need."""
        wanted = [self[expert_id] for expert_id in expert_ids]
        bases = [self[e.base] for e in wanted if e.is_adapter and e.base not in {w.id for w in wanted}]
        return Registry(wanted + bases, self.source)


def load_pool(ref: str | Path, *, store: Store | None = None, data_dir: Path | None = None) -> Registry:
    """A pool by registry file, by imported name (in `store`), or by bundled name, in that order."""
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.is_file() or len(path.parts) > 1:
        return Registry.from_file(path, data_dir)
    name = str(ref)
    stored = store.get_pool(name) if store is not None else None
    if stored is not None:
        return Registry(stored.experts, source=f"pool:{name}")
    bundled = bundled_pools()
    if name in bundled:
        return Registry.from_file(bundled[name], data_dir)
    imported = [pool.name for pool in store.list_pools()] if store is not None else []
    raise RegistryError(
        f"no pool {name!r}: not a registry file, not a pool imported into the database "
        f"({', '.join(imported) or 'none'}), not a bundled pool ({', '.join(bundled)}); "
        f"import one with `coe registry import FILE --name {name}`"
    )


def dump_expert(expert: ExpertSpec) -> dict[str, Any]:
    """An expert as registry-file YAML data: defaults left out, the backend's `kind` always kept."""
    data = expert.model_dump(mode="json", exclude_defaults=True)
    if expert.backend is not None:
        data["backend"] = {"kind": expert.backend.kind, **data.get("backend", {})}
        if expert.is_adapter:
            data.pop("backend")  # inherited from the base expert
    return data


def dump_registry(experts: Iterable[ExpertSpec]) -> str:
    """Registry-file YAML for `experts`; loading it gives the same experts back."""
    return yaml.safe_dump({"experts": [dump_expert(e) for e in experts]}, sort_keys=False, allow_unicode=True)
