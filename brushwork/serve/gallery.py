"""The queue's storage: one SQLite file (jobs and the image index) and the PNG files under `outputs/`.

A picture is written whole first (`save_png`: temp file, fsync, rename) and indexed after, so the index
never names a half-written file. Its file name is fixed by its job and its place in the job, so a job
re-run after a crash rewrites the same file instead of leaving a second copy; `clean_after_crash` removes
what a killed process left behind (temp files, pictures written but never indexed).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterable

from pydantic import ValidationError

from brushwork.engine.engine import GeneratedImage
from brushwork.errors import BrushworkError
from brushwork.output import prompt_slug, save_png
from brushwork.recipe import Recipe
from brushwork.serve.jobs import ImageRecord, Job, JobState

try:  # POSIX: one process per data folder; the kernel drops the lock when the process dies
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; one server per folder is then up to the user
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order; also names the job's files
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    recipe TEXT NOT NULL,                   -- Recipe JSON, seed already fixed
    state TEXT NOT NULL,
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    error TEXT,
    notes TEXT NOT NULL DEFAULT '[]',
    skipped TEXT NOT NULL DEFAULT '[]'      -- batches the user skipped: not re-run after a crash
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, seq);
CREATE TABLE IF NOT EXISTS images (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- gallery order
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    idx INTEGER NOT NULL,                   -- the picture's index among its recipe's images
    path TEXT NOT NULL,                     -- relative to outputs/
    seed INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    infotext TEXT NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (job_id, idx)
);
"""


def now() -> datetime:
    return datetime.now(timezone.utc)


def open_database(path: Path) -> sqlite3.Connection:
    """The queue's SQLite file, created when missing: WAL, fully synchronous, autocommit.

    One connection shared by all threads; callers serialise access with one lock.
    """
    # isolation_level=None: every statement outside an explicit BEGIN commits when it returns.
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")  # readers (other connections, other processes) never block the worker
    db.execute("PRAGMA synchronous=FULL")  # in WAL, NORMAL may lose the last commits on power loss
    db.execute("PRAGMA busy_timeout=10000")
    db.executescript(SCHEMA)
    return db


def claim_folder(data_dir: Path) -> IO[str] | None:
    """Lock the data folder for this process (closing the returned file releases it); raises
    BrushworkError when another live process holds it."""
    if fcntl is None:
        return None
    handle = open(data_dir / "queue.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise BrushworkError(f"another brushwork server is already using {data_dir}") from None
    return handle


def image_file_name(job_seq: int, index: int, seed: int, prompt: str) -> str:
    """`00012-03-1234567-a-red-fox.png`: job number, index in the job, seed, prompt slug (A1111-like)."""
    parts = [f"{job_seq:05d}", f"{index:02d}", str(seed)]
    slug = prompt_slug(prompt)
    if slug:
        parts.append(slug)
    return "-".join(parts) + ".png"


def _sync_folder(folder: Path) -> None:
    """Flush the folder's entries (a rename) to disk."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; NTFS renames are journaled
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def stored_recipe(row: sqlite3.Row) -> Recipe:
    """A job row's recipe; one that no longer validates (stored by another version) is returned as it
    is, to show, and fails with the reason when run."""
    try:
        return Recipe.model_validate_json(row["recipe"])
    except ValidationError:
        pass
    try:
        fields = json.loads(row["recipe"])
    except ValueError:  # not JSON at all (a damaged file): shown with defaults, fails with the reason when run
        fields = {}
    return Recipe.model_construct(**fields) if isinstance(fields, dict) else Recipe.model_construct()


class JobTable:
    """The jobs table. Every write commits when the call returns (autocommit)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock):
        self.db = db
        self.lock = lock

    def add(self, job: Job) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO jobs (id, owner, recipe, state, created) VALUES (?, ?, ?, ?, ?)",
                (job.id, job.owner, job.recipe.model_dump_json(), job.state.value, job.created.isoformat()),
            )

    def row(self, job_id: str) -> sqlite3.Row | None:
        with self.lock:
            return self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()

    def newest(self, owner: str | None, limit: int) -> list[sqlite3.Row]:
        where, args = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        with self.lock:
            return self.db.execute(f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()

    def queued(self) -> list[sqlite3.Row]:
        """Queued jobs' id, owner and seq, oldest first (not the recipes: img2img ones can be megabytes)."""
        with self.lock:
            return self.db.execute("SELECT id, owner, seq FROM jobs WHERE state = 'queued' ORDER BY seq").fetchall()

    def mark_running(self, job_ids: Iterable[str]) -> None:
        """Mark jobs running, all or none."""
        started = now().isoformat()
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for job_id in job_ids:
                    self.db.execute("UPDATE jobs SET state = 'running', started = ? WHERE id = ?", (started, job_id))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def finish(self, job_id: str, state: JobState, *, error: str | None = None, notes: Iterable[str] = (),
               only_from: JobState | None = None) -> bool:
        """Record the job's end (only when it is in state `only_from`, if given); whether it changed."""
        condition, args = ("AND state = ?", (only_from.value,)) if only_from else ("", ())
        with self.lock:
            cursor = self.db.execute(
                f"UPDATE jobs SET state = ?, finished = ?, error = ?, notes = ? WHERE id = ? {condition}",
                (state.value, now().isoformat(), error, json.dumps(list(dict.fromkeys(notes))), job_id, *args),
            )
        return cursor.rowcount > 0

    def requeue(self, job_id: str) -> None:
        with self.lock:
            self.db.execute("UPDATE jobs SET state = 'queued', started = NULL WHERE id = ?", (job_id,))

    def requeue_running(self) -> dict[str, int]:
        """Put jobs left running (by a process that died) back in the queue; returns their id -> seq."""
        with self.lock:
            rows = self.db.execute("SELECT id, seq FROM jobs WHERE state = 'running'").fetchall()
            self.db.execute("UPDATE jobs SET state = 'queued', started = NULL WHERE state = 'running'")
        return {row["id"]: row["seq"] for row in rows}

    def skipped(self, job_id: str) -> set[int]:
        row = self.row(job_id)
        return set(json.loads(row["skipped"])) if row is not None else set()

    def set_skipped(self, job_id: str, batches: set[int]) -> None:
        with self.lock:
            self.db.execute("UPDATE jobs SET skipped = ? WHERE id = ?", (json.dumps(sorted(batches)), job_id))


def job_from_row(row: sqlite3.Row, images: list[ImageRecord]) -> Job:
    return Job(
        id=row["id"], owner=row["owner"], recipe=stored_recipe(row), state=JobState(row["state"]),
        created=datetime.fromisoformat(row["created"]), started=_time(row["started"]),
        finished=_time(row["finished"]), error=row["error"], notes=json.loads(row["notes"]), images=images,
    )


def _record(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(
        id=row["id"], job_id=row["job_id"], path=row["path"], seed=row["seed"], width=row["width"],
        height=row["height"], infotext=row["infotext"], created=datetime.fromisoformat(row["created"]),
    )


class Gallery:
    """The image index: saves pictures into `outputs` and pages through them, newest first."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, outputs: Path):
        self.db = db
        self.lock = lock
        self.outputs = outputs.resolve()
        self.outputs.mkdir(parents=True, exist_ok=True)

    def save(self, job_id: str, job_seq: int, prompt: str, image: GeneratedImage) -> ImageRecord:
        """Write the picture (atomically) and then index it; returns its record."""
        name = image_file_name(job_seq, image.index, image.seed, prompt)
        save_png(image.image, self.outputs / name, infotext=image.infotext, recipe_json=image.recipe_json)
        _sync_folder(self.outputs)  # the rename must reach the disk before the index row that names it
        width, height = image.image.size
        record = ImageRecord(id=uuid.uuid4().hex, job_id=job_id, path=name, seed=image.seed, width=width,
                             height=height, infotext=image.infotext, created=now())
        with self.lock:
            self.db.execute(
                "INSERT INTO images (id, job_id, idx, path, seed, width, height, infotext, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, job_id, image.index, name, record.seed, width, height, record.infotext,
                 record.created.isoformat()),
            )
        return record

    def recorded_indices(self, job_id: str) -> set[int]:
        """Indices of the job's pictures already indexed (a re-run makes only the others)."""
        with self.lock:
            rows = self.db.execute("SELECT idx FROM images WHERE job_id = ?", (job_id,)).fetchall()
        return {row["idx"] for row in rows}

    def for_job(self, job_id: str) -> list[ImageRecord]:
        with self.lock:
            rows = self.db.execute("SELECT * FROM images WHERE job_id = ? ORDER BY idx", (job_id,)).fetchall()
        return [_record(row) for row in rows]

    def page(self, page: int = 0, per_page: int = 50) -> list[ImageRecord]:
        """One page of all pictures, newest first."""
        per_page = max(1, min(per_page, 500))
        with self.lock:
            rows = self.db.execute(
                "SELECT * FROM images ORDER BY seq DESC LIMIT ? OFFSET ?", (per_page, max(0, page) * per_page)
            ).fetchall()
        return [_record(row) for row in rows]

    def path(self, image_id: str) -> Path | None:
        """The picture's absolute path; None when unknown, missing, or (a tampered row) outside outputs."""
        with self.lock:
            row = self.db.execute("SELECT path FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            return None
        path = (self.outputs / row["path"]).resolve()
        if not path.is_relative_to(self.outputs) or not path.is_file():
            return None
        return path

    def clean_after_crash(self, redo_jobs: dict[str, int]) -> None:
        """Delete stray temp files, and the un-indexed pictures of the jobs that will be re-run
        (`redo_jobs`: job id -> job seq); call only while no worker is writing here."""
        for temp in self.outputs.glob(".*.tmp"):
            log.info("removing temp file left by a crash: %s", temp.name)
            temp.unlink(missing_ok=True)
        for job_id, seq in redo_jobs.items():
            with self.lock:
                rows = self.db.execute("SELECT path FROM images WHERE job_id = ?", (job_id,)).fetchall()
            indexed = {row["path"] for row in rows}
            for picture in self.outputs.glob(f"{seq:05d}-*.png"):
                if picture.name not in indexed:
                    # Written before the crash but never indexed: the re-run makes it again.
                    log.info("removing un-indexed picture left by a crash: %s", picture.name)
                    picture.unlink(missing_ok=True)
