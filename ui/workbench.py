"""What every page shares, held in Streamlit's resource cache so a rerun reloads no model and refits no
router: the settings, one `CompositionBuilder`, the Composers it fitted, and the session's pool."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from coe.compose import CompositionBuilder, CompositionSpec, StoredProfile
from coe.composer import Composer
from coe.datasets import load_mmlu_pro
from coe.errors import CoeError
from coe.outcomes import Outcomes
from coe.profile import check_profile_covers
from coe.registry import Registry
from coe.resources import bundled_pools
from coe.schema import Query
from coe.settings import Settings, apply_offline_environment
from coe.store import ProfileRecord, ProfileStore, Store
from coe.types import GenerationParams

KEPT = "kept_keys"


@dataclass
class Workbench:
    """The builder every page composes through; `lock` serialises fitting and generation (the
    scheduler is not thread-safe), so concurrent sessions take turns on the models."""

    settings: Settings
    builder: CompositionBuilder
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> str:
        return self.settings.model_dump_json()

    @property
    def store(self) -> Store:
        return self.builder.store

    def pool(self, ref: str) -> Registry:
        """A pool (reading files and the database only: no lock, so pages render while a comparison runs)."""
        return self.builder.pool(ref)

    def composer(self, spec: CompositionSpec) -> Composer:
        """The fitted Composer of `spec`, from the resource cache; call it holding `lock`."""
        return _fitted_composer(self.key, spec.model_dump_json())

    def close(self) -> None:
        """Unload the models the builder's scheduler keeps loaded (a server keeps them for its life)."""
        with self.lock:
            self.builder.scheduler.close()
            for backend in self.builder.backends.values():
                backend.close()

    def stored_outcomes(self, profile_id: int, pool: str) -> Outcomes:
        """A stored profile as the correctness matrix of the pool's experts (cached: it never changes)."""
        return _stored_outcomes(self.key, profile_id, pool)

    def forget_fits(self) -> None:
        """Drop every fitted Composer and read profile (a pool was imported again under its name)."""
        _fitted_composer.clear()
        _stored_outcomes.clear()

    def is_recorded(self, registry: Registry) -> bool:
        """Every expert answers from recorded responses (free and instant, but only for recorded items)."""
        return all(self.builder.scheduler.backend_for(e).capabilities.recorded for e in registry.experts)

    def covering_profiles(self, registry: Registry) -> list[ProfileRecord]:
        """Complete stored profiles that measured exactly these experts, newest first."""
        fitting = []
        for record in reversed(ProfileStore(self.store).all()):
            try:
                check_profile_covers(record, registry)
            except CoeError:
                continue
            if record.complete:
                fitting.append(record)
        return fitting


def workbench() -> Workbench:
    """This process's workbench for the current settings (`COE_*`, as `coe ui --pool` sets them)."""
    return _workbench(Settings().model_dump_json())


@st.cache_resource(show_spinner=False)
def _workbench(settings_json: str) -> Workbench:
    settings = Settings.model_validate_json(settings_json)
    if settings.offline:
        apply_offline_environment()
    return Workbench(settings, CompositionBuilder(settings))


@st.cache_resource(show_spinner=False, max_entries=32)
def _fitted_composer(settings_json: str, spec_json: str) -> Composer:
    return _workbench(settings_json).builder.compose(CompositionSpec.model_validate_json(spec_json))


@st.cache_resource(show_spinner=False, max_entries=16)
def _stored_outcomes(settings_json: str, profile_id: int, pool: str) -> Outcomes:
    builder = _workbench(settings_json).builder  # reads the database and the benchmark: no model runs
    outcomes, _ = builder.outcomes(StoredProfile(stored=profile_id), builder.pool(pool), GenerationParams())
    return outcomes


@st.cache_resource(show_spinner=False)
def mmlu_pro(split: str, data_dir: Path | None) -> list[Query]:
    """MMLU-Pro's test (12,032) or validation (70) items, loaded once per process."""
    return load_mmlu_pro("validation" if split == "validation" else "test", data_dir)


def pool_options(bench: Workbench) -> list[str]:
    """The pools a session can pick: the configured one, the imported ones, the bundled ones."""
    imported = [pool.name for pool in bench.store.list_pools()]
    return list(dict.fromkeys([bench.settings.pool, *imported, *bundled_pools()]))


def current_pool(bench: Workbench) -> str:
    """The pool this session looks at (the sidebar's choice; `coe ui --pool` sets the default)."""
    return str(st.session_state.get("pool") or bench.settings.pool)


def pool_picker(bench: Workbench) -> None:
    """The sidebar's pool selector, shared by every page (a link's `?pool=` sets its first value); a
    page asks for another pool (after an import) by setting `pool_next` and rerunning."""
    if "pool_next" in st.session_state:
        st.session_state["pool"] = st.session_state.pop("pool_next")
    st.session_state.setdefault("pool", st.query_params.get("pool") or bench.settings.pool)
    options = pool_options(bench)
    if st.session_state["pool"] not in options:
        options.insert(0, st.session_state["pool"])
    st.sidebar.selectbox(
        "Pool",
        options,
        key="pool",
        help="A bundled pool, one imported on the Experts page, or the registry file `coe ui --pool` named.",
    )
    st.sidebar.caption(f"Database: `{bench.store.url}`")


def keep(**defaults: object) -> None:
    """Give widget keys their first values; `keep_alive` then keeps them while the user is on other pages."""
    kept = st.session_state.setdefault(KEPT, set())
    for key, value in defaults.items():
        kept.add(key)
        st.session_state.setdefault(key, value)


def keep_alive() -> None:
    """Re-assign every kept key on each run: Streamlit drops the state of widgets a run does not draw,
    so without this a visit to another page would reset the Compare page's choices."""
    for key in st.session_state.get(KEPT, ()):
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
