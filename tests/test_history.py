"""studio.history: PNGs saved with their parameters come back newest first, across restarts."""

from __future__ import annotations

import os
import time

import pytest
from PIL import Image

from studio import pngmeta
from studio.history import History
from studio.schemas import GenerationRequest


def _png(prompt: str, seed: int, model: str = "sdxl-turbo") -> bytes:
    request = GenerationRequest(
        prompt=prompt, model=model, width=64, height=64, steps=2, guidance=0.0, seed=seed, num_images=1
    )
    return pngmeta.encode(Image.new("RGB", (64, 64), "teal"), request, seed, "SDXL Turbo")


def test_saved_images_list_newest_first_with_their_parameters(tmp_path):
    history = History(tmp_path / "outputs")
    first = history.save(_png("a red fox", 1))
    second = history.save(_png("a blue whale", 2))

    entries = history.entries()

    assert [entry.path for entry in entries] == [second, first]
    assert entries[0].params["prompt"] == "a blue whale"
    assert entries[0].params["seed"] == 2
    assert "seed 2" in entries[0].caption and "sdxl-turbo" in entries[0].caption
    assert first.read_bytes() == _png("a red fox", 1)  # stored byte for byte: the metadata survives


def test_history_survives_a_restart(tmp_path):
    folder = tmp_path / "outputs"
    saved = [History(folder).save(_png(f"prompt {i}", i)) for i in range(3)]

    reopened = History(folder)  # a new process would start exactly like this

    assert [entry.path for entry in reopened.entries()] == saved[::-1]
    assert [entry.params["prompt"] for entry in reopened.entries()] == ["prompt 2", "prompt 1", "prompt 0"]


def test_listing_is_bounded_and_names_never_collide(tmp_path):
    history = History(tmp_path, limit=5)
    paths = [history.save(_png("same", 7)) for _ in range(8)]  # same model and seed, same microsecond likely

    assert len(set(paths)) == 8
    assert len(history.entries()) == 5
    assert len(history.entries(limit=20)) == 8
    assert [entry.path for entry in history.entries()] == paths[::-1][:5]


def test_foreign_and_broken_files_do_not_break_the_listing(tmp_path):
    history = History(tmp_path)
    good = history.save(_png("kept", 3))
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    plain = tmp_path / "holiday.png"
    Image.new("RGB", (8, 8)).save(plain)
    os.utime(plain, (time.time() + 60, time.time() + 60))  # copied in later than the studio image

    entries = history.entries()

    assert [entry.path for entry in entries] == [plain, good]
    assert entries[0].params == {} and entries[0].caption == "holiday.png"


def test_missing_folder_is_an_empty_history(tmp_path):
    assert History(tmp_path / "never-created").entries() == []


def test_owner_dir_gives_each_login_and_api_key_its_own_folder(tmp_path):
    from studio.history import owner_dir

    assert owner_dir(tmp_path, None) == tmp_path
    assert owner_dir(tmp_path, None, kind="api") == tmp_path / "api"
    assert owner_dir(tmp_path, "ann") == tmp_path / "users" / "ann"
    assert owner_dir(tmp_path, "ci", kind="api") == tmp_path / "api" / "ci"
    # Names that would escape or collide as plain path parts stay inside, one folder each.
    hostile = ["..", ".", "a/b", "a_2fb", "A", "a b", "ann/../bob", "é"]
    folders = [owner_dir(tmp_path, name) for name in hostile]
    assert len(set(folders)) == len(hostile)
    for folder in folders:
        assert folder.parent == tmp_path / "users"
        assert folder.name not in {".", ".."} and "/" not in folder.name


def test_captions_show_the_prompt_and_date_and_the_filter_matches_every_word(tmp_path):
    history = History(tmp_path)
    history.save(_png("a red fox in the snow", 1))
    history.save(_png("a blue whale", 2, model="sdxl-base"))

    newest, oldest = history.entries()
    assert newest.caption.startswith("a blue whale — sdxl-base · 64×64 · seed 2 · ")
    assert newest.created.strftime("%Y-%m-%d") in newest.caption
    assert [e.params["seed"] for e in history.entries(query="RED snow")] == [1]
    assert [e.params["seed"] for e in history.entries(query="sdxl-base")] == [2]
    assert history.entries(query="red whale") == []
    assert len(history.entries(query="  ")) == 2


def test_delete_removes_only_that_file_and_only_inside_the_history(tmp_path):
    history = History(tmp_path / "users" / "ann")
    keep, gone = history.save(_png("keep", 1)), history.save(_png("gone", 2))
    other = History(tmp_path / "users" / "bob").save(_png("bob's", 3))

    history.delete(gone)

    assert not gone.exists() and keep.exists() and other.exists()
    for path in (other, tmp_path / "users" / "ann" / ".." / "bob" / other.name, tmp_path / "notes.txt"):
        with pytest.raises(PermissionError):
            history.delete(path)
    assert other.exists()
    admin = History(tmp_path, everything=True)  # an admin's view holds every folder below
    assert {e.params["prompt"] for e in admin.entries()} == {"keep", "bob's"}
    admin.delete(other)
    assert not other.exists()


def test_retention_keeps_the_newest_images_per_folder_and_drops_old_ones(tmp_path):
    ann, bob = History(tmp_path / "users" / "ann"), History(tmp_path / "users" / "bob")
    ann_files = [ann.save(_png(f"ann {i}", i)) for i in range(4)]
    bob_files = [bob.save(_png(f"bob {i}", i)) for i in range(2)]
    notes = tmp_path / "users" / "ann" / "notes.txt"
    notes.write_text("not an image")
    everything = History(tmp_path, everything=True)

    assert everything.prune() == 0 and everything.prune(keep_days=0, keep_images=0) == 0  # off by default
    assert everything.prune(keep_images=3) == 1
    assert [p.exists() for p in ann_files] == [False, True, True, True]
    assert all(p.exists() for p in bob_files) and notes.exists()  # bob's count is his own

    old = time.time() - 3 * 86400
    os.utime(bob_files[0], (old, old))
    assert everything.prune(keep_days=2) == 1
    assert not bob_files[0].exists() and bob_files[1].exists() and ann_files[1].exists()


def test_retention_of_everything_stays_in_the_owner_folders(tmp_path):
    kept = tmp_path / "my-favourites"  # a folder of the user's own inside outputs/: not ours to prune
    saved = [History(kept).save(_png("favourite", 1)), History(tmp_path / "api").save(_png("rest", 2)),
             History(tmp_path / "api" / "ci").save(_png("ci", 3))]
    old = time.time() - 10 * 86400
    for path in saved:
        os.utime(path, (old, old))

    assert History(tmp_path, everything=True).prune(keep_days=1) == 2
    assert len(list(kept.glob("*.png"))) == 1
