"""observe_again finds the unit a step changed by its position (issue 15: a search walked every
unit after every step) and, given a position that is not that unit's, still looks at the right one."""

from __future__ import annotations

from conftest import WNIDS, Dataset
from datasetd.config.parsing import load
from datasetd.state.journal import JournalDB
from datasetd.state.observe import observe, observe_again


def test_a_unit_is_observed_again_by_its_position_and_a_wrong_position_is_not_trusted(dataset: Dataset) -> None:
    assert dataset.run("apply") == 0
    m = load(dataset.manifest)
    journal = JournalDB(m.state_dir)
    comp = m.components["train"]
    state = observe(m, journal).components["train"]
    names = [u.name for u in state.units]
    assert set(names) == set(WNIDS)
    changed = names[3]
    victim = next(p for p in (dataset.root / "train" / changed).iterdir() if p.is_file())
    victim.unlink()  # the folder no longer matches its record
    right = observe_again(comp, journal, state, changed, at=3)
    wrong = observe_again(comp, journal, state, changed, at=5)
    unknown = observe_again(comp, journal, state, changed)
    for seen in (right, wrong, unknown):
        assert [u.name for u in seen.units] == names
        assert not seen.units[3].intact, "the changed unit is looked at again"
        assert all(seen.units[p] is state.units[p] for p in range(len(names)) if p != 3)
    assert right == wrong == unknown
