"""run.json read and written through ``RunRecord``: today's files (no version) read as version 1, written back with
the same keys and values plus the version; keys this oreo does not know survive; merges keep another writer's
entries but not those removed on purpose."""
import json

import pytest

from oreo.run_dir import RunDir
from oreo.run_record import VERSION, RunRecord, RunRecordError

# a run.json as oreo wrote it before it had a version
UNVERSIONED = {
    "settings": {"sft": {"seed": 0, "sft.train.lr": 1e-4, "seed_offset": 1}, "evaluate": {"sampler.backend": "hf"}},
    "stages": {"sft": {"steps": 3}, "collect_0": {"n": 96}},
    "accuracy": {"sft": {"test": 0.25, "validation": 0.5}, "oreo": {"test": 0.5}},
    "buffer": {"n": 96, "frac_correct": 0.1},
    "skipped": {"oreo": "3 records (all) gave less than one batch"},
    "rounds": [{"round": 0, "method": "sft", "test": 0.25}],
}


def test_a_file_without_a_version_reads_as_version_1_and_writes_back_the_same_plus_the_version(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps(UNVERSIONED))
    record = RunDir(tmp_path).read_record()
    assert record.version == 1 and record.accuracy == UNVERSIONED["accuracy"] and record.rounds == UNVERSIONED["rounds"]
    RunDir(tmp_path).write_record(record)
    assert json.loads((tmp_path / "run.json").read_text()) == {"version": VERSION, **UNVERSIONED}
    assert (tmp_path / "metrics.json").read_text() == json.dumps(UNVERSIONED["accuracy"], indent=2)


def test_keys_this_oreo_does_not_know_are_kept(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({**UNVERSIONED, "notes": {"by": "another tool"}, "tag": 7}))
    record = RunDir(tmp_path).read_record()
    assert record.extra == {"notes": {"by": "another tool"}, "tag": 7}
    record.record_stage("oreo", {"steps": 6})
    RunDir(tmp_path).write_record(record)
    on_disk = json.loads((tmp_path / "run.json").read_text())
    assert on_disk["notes"] == {"by": "another tool"} and on_disk["tag"] == 7 and on_disk["stages"]["oreo"]


def test_a_section_nothing_was_recorded_in_is_absent_and_an_emptied_one_stays():
    record = RunRecord()
    assert record.to_dict() == {"version": VERSION}
    record.record_skipped("dpo", "why")
    record.forget("skipped", "dpo")
    assert record.to_dict() == {"version": VERSION, "skipped": {}}


def test_a_write_keeps_another_writers_entries_but_not_those_removed_on_purpose(tmp_path):
    files = RunDir(tmp_path)
    files.write_record(RunRecord.from_dict(UNVERSIONED))
    stale = RunRecord()   # read before the file above was written
    stale.forget("accuracy", "oreo")
    stale.forget("buffer")
    stale.record_accuracy("dpo", {"test": 0.75})
    files.write_record(stale)
    merged = stale
    assert merged.accuracy == {"sft": UNVERSIONED["accuracy"]["sft"], "dpo": {"test": 0.75}}
    assert merged.buffer is None and merged.stages == UNVERSIONED["stages"]
    assert RunDir(tmp_path).read_record() == merged


@pytest.mark.parametrize("content,says", [
    ('{"accuracy": {"sft": ', "damaged"),
    ("[1, 2]", "damaged.*not an object"),
    ('{"accuracy": [1]}', "damaged.*'accuracy' is not a JSON dict"),
    ('{"version": 99}', "version 99, written by a newer oreo"),
])
def test_a_file_that_cannot_be_read_names_itself_and_why(tmp_path, content, says):
    (tmp_path / "run.json").write_text(content)
    with pytest.raises(RunRecordError, match=says):
        RunDir(tmp_path).read_record()
