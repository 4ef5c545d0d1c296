"""--out belongs to minift only when it says so: a refused command leaves a folder it did not write exactly as it
was (every file, folder and byte), and a failed command leaves no folder it made (minift/app/outdir.py)."""
import json
import os

import pytest

from minift.app.cli import main
from minift.errors import MiniftError
from minift.app.outdir import ASIDE, RunFolder, is_marker, marker


def _tree(folder):
    """Every entry under folder: folders by name, files by name and bytes."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else "dir") for p in sorted(folder.rglob("*"))}


def _foreign_project(tmp_path):
    """The issue's folder: names minift writes, but none of it minift's."""
    proj = tmp_path / "proj"
    (proj / "model").mkdir(parents=True)
    (proj / "checkpoints").mkdir()
    (proj / "run.json").write_text('{"my": "x"}')
    (proj / "notes.txt").write_text("n\n")
    (proj / ".finetune.json.k2x9.tmp").write_text("mine too")     # looks like a killed write of minift's
    return proj


@pytest.mark.parametrize("flags", [[], ["--resume"], ["--overwrite"]])
def test_a_folder_minift_did_not_write_is_refused_and_left_exactly_as_it_was(tmp_path, capsys, flags):
    proj = _foreign_project(tmp_path)
    before = _tree(proj)
    assert main(["finetune", "--steps", "3", "--quiet", "--out", str(proj), *flags]) == 1
    err = capsys.readouterr().err
    assert "holds files minift did not write" in err and "its run.json is not minift's" in err
    assert "changed nothing" in err and _tree(proj) == before


def test_a_lone_run_json_that_is_not_minifts_is_not_replaced(tmp_path, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "run.json").write_text('{"command": "finetune"}')      # minift's command, but not its marker
    assert main(["finetune", "--steps", "3", "--quiet", "--out", str(proj)]) == 1
    assert "its run.json is not minift's" in capsys.readouterr().err
    assert (proj / "run.json").read_text() == '{"command": "finetune"}'


def test_familiar_names_without_a_marker_are_no_proof(tmp_path, capsys):
    proj = tmp_path / "proj"
    (proj / "checkpoints").mkdir(parents=True)                     # empty: nothing to lose, but not minift's either
    (proj / "model").mkdir()
    before = _tree(proj)
    assert main(["finetune", "--steps", "3", "--quiet", "--out", str(proj), "--overwrite"]) == 1
    assert "no run.json of minift's" in capsys.readouterr().err and _tree(proj) == before


def test_a_minift_folder_holding_a_foreign_file_is_refused_before_it_is_tidied(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "run.json").write_text(json.dumps(marker("finetune", [])))
    (proj / ".finetune.json.k2x9.tmp").write_text("a killed write")   # settle() would remove this
    (proj / "notes.txt").write_text("mine")
    before = _tree(proj)
    folder = RunFolder(proj, "finetune", overwrite=True, argv=[])
    with pytest.raises(MiniftError, match=r"holds files minift did not write \(notes.txt\)"):
        folder.open()
    assert folder.close() is None and _tree(proj) == before


def test_the_marker_is_what_open_writes_and_earlier_versions_count_too(tmp_path):
    folder = RunFolder(tmp_path / "run", "pretrain", argv=["pretrain", "--steps", "3"])
    folder.open()
    run_json = tmp_path / "run" / "run.json"
    assert is_marker(run_json) and json.loads(run_json.read_text())["argv"][:2] == ["minift", "pretrain"]
    folder.close()
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"command": "compare", "started": "2026-11-29T12:00:00+0000",
                                  "argv": ["minift", "compare"]}))
    assert is_marker(legacy)
    for text in ('{"command": "compare"}', '{"command": "compare", "started": "x", "mine": 1}',
                 '{"written_by": "minift", "command": "rm"}', "[1, 2]", "not json"):
        legacy.write_text(text)
        assert not is_marker(legacy), text


def test_a_start_killed_while_writing_run_json_is_taken_as_empty(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / ".run.json.a1b2c3.tmp").write_text('{"writ')          # kill -9 inside atomic_write of the marker
    folder = RunFolder(proj, "finetune", argv=[])
    folder.open()
    assert sorted(os.listdir(proj)) == ["run.json"]
    folder.close()


def test_a_kill_during_overwrite_is_proved_by_the_run_set_aside(tmp_path):
    proj = tmp_path / "proj"
    (proj / ASIDE / "checkpoints" / "step-000002").mkdir(parents=True)
    (proj / ASIDE / "checkpoints" / "step-000002" / "state.json").write_text("{}")
    (proj / ASIDE / "run.json").write_text(json.dumps(marker("finetune", [])))
    folder = RunFolder(proj, "finetune", resume=True, argv=[])
    folder.open()                                    # no run.json at the top: the aside one proves the folder
    assert (proj / "checkpoints" / "step-000002" / "state.json").is_file() and not (proj / ASIDE).exists()
    folder.close()


def test_a_failed_command_leaves_no_folder_it_made(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "c"
    assert main(["finetune", "--steps", "3", "--quiet", "--task", "nosuch", "--out", str(out)]) == 1
    assert "nosuch" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == []                  # not c, nor the parents made for it
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("x")
    assert main(["finetune", "--steps", "3", "--quiet", "--task", "nosuch", "--out", str(out)]) == 1
    assert sorted(os.listdir(tmp_path / "a")) == ["keep.txt"]  # a parent that was there stays


def _a_run(folder, command="finetune"):
    """A minift run folder with a checkpoint (what has_something counts), made by hand."""
    (folder / "checkpoints" / "step-000002").mkdir(parents=True)
    (folder / "checkpoints" / "step-000002" / "state.json").write_text("{}")
    (folder / "checkpoints" / "latest").write_text("step-000002\n")
    (folder / "run.json").write_text(json.dumps(marker(command, [])))
    return folder


@pytest.mark.parametrize("flags", [[], ["--resume"], ["--overwrite"]])
def test_a_planted_set_aside_folder_is_refused_not_removed_or_moved_up(tmp_path, capsys, flags):
    run = _a_run(tmp_path / "run")
    (run / ASIDE).mkdir()
    (run / ASIDE / "notes.txt").write_text("precious")
    only_aside = tmp_path / "only"                     # the marker only inside, beside a user's files
    (only_aside / ASIDE / "photos").mkdir(parents=True)
    (only_aside / ASIDE / "run.json").write_text(json.dumps(marker("finetune", [])))
    (only_aside / ASIDE / "thesis.tex").write_text("mine")
    for folder in (run, only_aside):
        before = _tree(folder)
        assert main(["finetune", "--steps", "2", "--quiet", "--task", "nosuch", "--out", str(folder), *flags]) == 1
        assert "minift did not write" in capsys.readouterr().err and _tree(folder) == before


def test_nothing_is_written_or_deleted_through_a_link(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "README.md").write_text("my own readme")
    run = _a_run(tmp_path / "run")
    (run / "adapter").symlink_to(outside, target_is_directory=True)
    before, outside_before = _tree(run), _tree(outside)
    assert main(["finetune", "--steps", "4", "--quiet", "--out", str(run), "--resume"]) == 1
    assert "adapter" in capsys.readouterr().err
    assert _tree(run) == before and _tree(outside) == outside_before


@pytest.mark.parametrize("planted", ["holiday.png", "seed-list.csv", "lorarama.txt", "model/my_weights.bin",
                                     "checkpoints/step-000002/notes.md", "README.md"])
def test_only_the_exact_names_minift_writes_count_as_its_own(tmp_path, capsys, planted):
    run = _a_run(tmp_path / "run")
    (run / planted).parent.mkdir(parents=True, exist_ok=True)
    (run / planted).write_text("mine")
    before = _tree(run)
    assert main(["finetune", "--steps", "2", "--quiet", "--out", str(run), "--overwrite"]) == 1
    assert planted in capsys.readouterr().err and _tree(run) == before


def test_a_refusal_of_a_minift_folder_leaves_even_its_leftovers(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "seed-3").mkdir(parents=True)                       # a leftover: a folder with no file in it
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")  # a file of a run that saved no result
    (run / "run.json").write_text(json.dumps(marker("finetune", [])))
    before = _tree(run)
    assert main(["finetune", "--steps", "2", "--quiet", "--out", str(run)]) == 1
    assert "saved no result" in capsys.readouterr().err and _tree(run) == before


# ---- a kill at any point of --overwrite's moves: the next command finishes them (settle's order) ----------------

def _earlier_run(tmp_path):
    run = _a_run(tmp_path / "run")
    (run / "finetune.json").write_text('{"steps": 2}')
    return run


def _settled(run, **flags):
    folder = RunFolder(run, "finetune", argv=[], **flags)
    folder.open()
    folder.close()


def test_a_set_aside_cut_short_is_put_back(tmp_path):
    """Killed while moving the earlier run aside: run.json moves last, so the top still holds it."""
    run = _earlier_run(tmp_path)
    before = _tree(run)
    (run / ASIDE).mkdir()
    (run / "checkpoints").rename(run / ASIDE / "checkpoints")             # one entry moved, then kill -9
    _settled(run, resume=True)                                           # refused nothing, put everything back
    assert _tree(run) == before


def test_a_set_aside_finished_before_the_new_run_started_is_put_back(tmp_path):
    run = _earlier_run(tmp_path)
    before = _tree(run)
    (run / ASIDE).mkdir()
    for e in list(run.iterdir()):
        if e.name != ASIDE:
            e.rename(run / ASIDE / e.name)                               # everything aside, no new run.json yet
    _settled(run, resume=True)
    assert _tree(run) == before


def test_dropping_the_earlier_run_cut_short_is_finished(tmp_path):
    """The new run had something: the earlier one is renamed to DROPPED, then deleted; a kill during the delete
    leaves part of it, which the next command removes."""
    from minift.app.outdir import DROPPED
    run = _earlier_run(tmp_path)
    (run / DROPPED / "model").mkdir(parents=True)
    (run / DROPPED / "model" / "config.json").write_text("{}")           # what the cut-short delete left
    before = {k: v for k, v in _tree(run).items() if not k.startswith(DROPPED)}
    _settled(run, resume=True)
    assert _tree(run) == before


def test_a_restore_cut_short_is_finished(tmp_path):
    """The new run failed with nothing: it is moved into DROPPED (its run.json last), the earlier one back up (its
    run.json last). A kill at either move is finished by the next command, the earlier run intact."""
    from minift.app.outdir import DROPPED
    for cut in ("dropping the new run", "putting the earlier back"):
        earlier = _earlier_run(tmp_path / cut)
        before = _tree(earlier)
        (earlier / ASIDE).mkdir()
        for e in list(earlier.iterdir()):
            if e.name != ASIDE:
                e.rename(earlier / ASIDE / e.name)
        (earlier / "run.json").write_text(json.dumps(marker("finetune", [])))   # the new run: nothing saved
        (earlier / "adapter").mkdir()
        (earlier / DROPPED).mkdir()
        (earlier / "adapter").rename(earlier / DROPPED / "adapter")          # its first entry dropped, then kill
        if cut == "putting the earlier back":
            (earlier / "run.json").rename(earlier / DROPPED / "run.json")
            (earlier / ASIDE / "checkpoints").rename(earlier / "checkpoints")  # one entry back, then kill
        _settled(earlier, resume=True)
        assert _tree(earlier) == before, cut


def test_a_planted_folder_inside_the_set_aside_run_is_refused(tmp_path, capsys):
    run = _earlier_run(tmp_path)
    (run / ASIDE / ASIDE).mkdir(parents=True)
    (run / ASIDE / "run.json").write_text(json.dumps(marker("finetune", [])))
    (run / ASIDE / ASIDE / "run.json").write_text(json.dumps(marker("finetune", [])))
    (run / ASIDE / ASIDE / "thesis.tex").write_text("mine")
    before = _tree(run)
    assert main(["finetune", "--steps", "2", "--quiet", "--out", str(run), "--resume"]) == 1
    assert "minift did not write" in capsys.readouterr().err and _tree(run) == before


def test_a_run_killed_in_its_first_save_is_not_a_run_that_saved_nothing(tmp_path):
    """A checkpoint folder cut short (.step-N.partial) or a temporary file is what settle() clears: the folder is
    then empty of results, and a plain command reuses it rather than asking for --overwrite."""
    run = tmp_path / "run"
    (run / "checkpoints" / ".step-000002.partial").mkdir(parents=True)
    (run / "checkpoints" / ".step-000002.partial" / "weights.safetensors").write_text("half")
    (run / "model").mkdir()
    (run / "model" / ".config.json.abc123.tmp").write_text("half")
    (run / "run.json").write_text(json.dumps(marker("finetune", [])))
    folder = RunFolder(run, "finetune", argv=[])
    folder.open()
    assert sorted(os.listdir(run)) == ["run.json"]
    folder.close()


def test_an_earlier_versions_figures_are_still_minifts(tmp_path, capsys):
    """compare's pictures were renamed; a report folder an earlier version wrote (loss_curves.png, spectra.png,
    intruders_vs_eps.png) is still minift's to replace."""
    run = _a_run(tmp_path / "run", command="compare")
    for name in ("loss_curves.png", "spectra.png", "intruders_vs_eps.png", "report.md"):
        (run / name).write_bytes(b"earlier")
    assert main(["finetune", "--steps", "2", "--quiet", "--task", "nosuch", "--out", str(run), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "minift did not write" not in err and "nosuch" in err
