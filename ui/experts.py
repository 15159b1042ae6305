"""Experts: the pool as a table, which experts share one model load, their measured profiles as heat
maps, and importing a registry file."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from coe.backends.references import missing_references
from coe.errors import CoeError
from coe.outcomes import Outcomes
from coe.profile import profile_name
from coe.registry import Registry, load_registry_file
from coe.routers.skill import skill_profile
from coe.schema import ExpertSpec
from ui.charts import heatmap, rows_height
from ui.display import message
from ui.workbench import Workbench, current_pool, workbench

POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
ROWS = {"category": "category", "skill": "skill (annotated when profiled)"}
VALUES = {"accuracy": "accuracy", "profile": "±1 profile (Symbolic-MoE: +1 right, −1 wrong)"}


def render() -> None:
    bench = workbench()
    pool = current_pool(bench)
    st.header(f"Experts of pool {pool}")
    try:
        registry = bench.pool(pool)
    except CoeError as error:
        st.error(f"Pool {pool!r} cannot be loaded: {error}")
    else:
        st.dataframe(expert_table(registry), hide_index=True)
        _shared_loads(bench, registry)
        _profiles(bench, registry)
    _import(bench)


def expert_table(registry: Registry) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "expert": e.id,
                "backend": e.backend_kind,
                "base model": e.base,
                "adapter": e.adapter.name if e.adapter else "",
                "parameters (B)": e.params_b,
                "$ / M tokens": e.cost_per_mtok,
                "context": e.context,
                "tags": ", ".join(e.tags),
                "description": e.description,
            }
            for e in registry.experts
        ]
    )


def _shared_loads(bench: Workbench, registry: Registry) -> None:
    """Experts on one model (a base and its adapters, prompt variants) are served by one load."""
    groups: dict[str, list[ExpertSpec]] = {}
    for expert in registry.experts:
        groups.setdefault(expert.load_key, []).append(expert)
    loaded = {
        key: group
        for key, group in groups.items()
        if bench.builder.scheduler.backend_for(group[0]).capabilities.needs_load
    }
    st.subheader("Model loads")
    if not loaded:
        st.caption("No expert of this pool needs a model loaded (recorded answers or API models).")
        return
    shared = sum(len(group) > 1 for group in loaded.values())
    st.caption(
        f"{len(registry)} experts, {len(loaded)} model loads: the scheduler loads each model once per batch"
        + (f"; {shared} of them serve several experts." if shared else ".")
    )
    st.dataframe(
        pd.DataFrame(
            [
                {"model load": key, "experts": ", ".join(e.id for e in group), "n": len(group)}
                for key, group in loaded.items()
            ]
        ),
        hide_index=True,
    )


def _profiles(bench: Workbench, registry: Registry) -> None:
    st.subheader("Profiles")
    records = bench.covering_profiles(registry)
    if not records:
        st.info(
            "No stored profile has measured these experts yet. Measure one with "
            f"`coe profile --pool {current_pool(bench)} --bench mmlu-pro --split random:1400:0` "
            "(a comparison on a recorded pool measures it too). Meanwhile, the declared priors:"
        )
        _priors(registry)
        return
    labels = {f"#{r.id}: {profile_name(r)} ({r.created_at:%Y-%m-%d %H:%M})": r.id for r in records}
    choice, rows, values = st.columns([3, 2, 3])
    label = choice.selectbox("Stored profile", list(labels), key="experts_profile")
    by = rows.radio("Rows", list(ROWS), format_func=ROWS.get, key="experts_rows", horizontal=True)
    value = values.radio("Values", list(VALUES), format_func=VALUES.get, key="experts_values", horizontal=True)
    try:
        outcomes = bench.stored_outcomes(labels[label], current_pool(bench))
    except CoeError as error:
        st.error(f"This profile cannot be read: {error}")
        return
    frame = profile_frame(outcomes, by=by, value=value)
    if frame.empty:
        st.info(
            "This profile has no skill annotations (it was measured for routers other than skill); pick Rows: category."
        )
        return
    overall = outcomes.accuracy()
    st.caption(
        f"{len(outcomes.items)} profiling items · overall accuracy: "
        + ", ".join(f"{e} {a:.2f}" for e, a in zip(outcomes.expert_ids, overall, strict=True))
    )
    st.altair_chart(
        heatmap(
            frame,
            x="expert",
            y=by,
            value=value,
            diverging=value == "profile",
            value_format=".2f" if value == "accuracy" else ".0f",
        ),
        width="stretch",
    )


def profile_frame(outcomes: Outcomes, *, by: str, value: str) -> pd.DataFrame:
    """Long-form (row, expert, value) from the profile: accuracy per category (`Outcomes`), or the
    Symbolic-MoE ±1 sums and their accuracy per skill or category (`skill_profile`)."""
    labels = [item.skills if by == "skill" else (item.category or "",) for item in outcomes.items]
    if value == "accuracy" and by == "category":
        table = outcomes.category_accuracy()
        return pd.DataFrame(
            [
                {by: name, "expert": e, value: float(v)}
                for name, row in table.items()
                for e, v in zip(outcomes.expert_ids, row, strict=True)
            ]
        )
    names, sums, measured = skill_profile(labels, outcomes.correct)
    rows = []
    for i, name in enumerate(names):
        for j, expert in enumerate(outcomes.expert_ids):
            if measured[i, j]:
                score = sums[i, j] if value == "profile" else (sums[i, j] / measured[i, j] + 1) / 2
                rows.append({by: name, "expert": expert, value: float(score)})
    return pd.DataFrame(rows, columns=[by, "expert", value])


def _priors(registry: Registry) -> None:
    rows = [{"skill": s, "expert": e.id, "accuracy": v} for e in registry.experts for s, v in e.skills.items()]
    if rows:
        frame = pd.DataFrame(rows)
        chart = heatmap(frame, x="expert", y="skill", value="accuracy")
        st.altair_chart(chart, width="stretch", height=rows_height(frame["skill"].nunique(), extra_px=130))
    else:
        st.caption("The registry declares no priors either.")


# --------------------------------------------------------------------------- import


def _import(bench: Workbench) -> None:
    st.subheader("Import a registry file")
    st.caption(
        "Validated like `coe registry import`: the experts are stored in the database as a named pool. "
        "Relative paths (recorded responses, adapters) resolve against the data dir."
    )
    if "imported" in st.session_state:
        st.success(st.session_state.pop("imported"))
    upload = st.file_uploader("Registry file (YAML)", type=["yaml", "yml"], key="registry_upload")
    if upload is None:
        return
    experts, problem = validate_upload(upload, bench.settings.data_dir)
    if problem:
        st.error(f"{upload.name} is not a valid registry file, so nothing was imported:\n\n{message(problem)}")
        return
    st.success(f"{upload.name}: {len(experts)} valid experts.")
    st.dataframe(expert_table(Registry(experts, source=upload.name)), hide_index=True)
    name = st.text_input("Pool name", value=Path(upload.name).stem, key="import_name")
    if st.button("Import as a pool", type="primary"):
        if not POOL_NAME.match(name):
            st.error(f"{name!r} cannot name a pool: use letters, digits, '-' and '_' (e.g. {Path(upload.name).stem}).")
            return
        summary = bench.store.import_pool(name, experts, source=f"uploaded {upload.name}")
        bench.forget_fits()
        st.session_state["imported"] = (
            f"Imported {upload.name} as pool {name!r} ({len(summary.added)} added, {len(summary.updated)} updated, "
            f"{len(summary.unchanged)} unchanged); it is now the selected pool."
        )
        st.session_state["pool_next"] = name
        st.rerun()


def validate_upload(upload: UploadedFile, data_dir: Path | None) -> tuple[list[ExpertSpec], str]:
    """The uploaded file's experts, or what is wrong with it in plain words (file and field named), checked
    as `coe registry import` checks: the schema, then that weights, adapters and recordings exist."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(upload.name).name
        path.write_bytes(upload.getvalue())
        try:
            experts = load_registry_file(path, data_dir)
        except CoeError as error:
            return [], str(error).replace(str(path), upload.name)
    missing = [problem for expert in experts for problem in missing_references(expert)]
    return (experts, "") if not missing else ([], "\n".join(missing))


if __name__ == "__main__":
    render()
