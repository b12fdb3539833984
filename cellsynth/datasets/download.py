"""Downloaders for the public datasets the importers read (LIVECell, DSB2018 / BBBC038).

Files are fetched with :mod:`urllib` (with a timeout), written atomically (a temporary name,
renamed when complete and, where a checksum is known, verified), and zip archives are extracted
atomically into a folder named after the archive. When the server cannot be reached the
:class:`CellsynthError` says where to download the files by hand and which folder to pass to
``cellsynth dataset import``. Checksums are listed only where known; ``None`` means the file is
not verified (no published sha256 is known to us).

After ``download_dataset("livecell", DIR)``::

    DIR/livecell_coco_{train,val,test}.json, DIR/images/...      -> import livecell DIR
After ``download_dataset("dsb2018", DIR)``::

    DIR/stage1_train/ID/{images,masks}/...                        -> import dsb2018 DIR/stage1_train
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cellsynth.atomic import atomic_dir, atomic_path
from cellsynth.errors import CellsynthError

_LIVECELL = "http://livecell-dataset.s3.eu-central-1.amazonaws.com/LIVECell_dataset_2021"
_BBBC038 = "https://data.broadinstitute.org/bbbc/BBBC038"


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: ``url``, local ``name``, ``sha256`` (None: unknown, not checked),
    ``extract`` (a zip unpacked into ``DEST/<name without .zip>``)."""

    url: str
    name: str
    sha256: str | None = None
    extract: bool = False


@dataclass(frozen=True)
class RemoteDataset:
    """A public dataset: where it lives (``page``), its files, and the folder to import."""

    page: str
    files: tuple[RemoteFile, ...]
    import_format: str
    import_folder: str  # relative to the download folder
    license: str


DATASETS: dict[str, RemoteDataset] = {
    "livecell": RemoteDataset(
        page="https://sartorius-research.github.io/LIVECell/",
        files=(
            # sha256 of these files is not published; they are not verified.
            RemoteFile(f"{_LIVECELL}/images.zip", "images.zip", None, extract=True),
            RemoteFile(
                f"{_LIVECELL}/annotations/LIVECell/livecell_coco_train.json",
                "livecell_coco_train.json",
            ),
            RemoteFile(
                f"{_LIVECELL}/annotations/LIVECell/livecell_coco_val.json",
                "livecell_coco_val.json",
            ),
            RemoteFile(
                f"{_LIVECELL}/annotations/LIVECell/livecell_coco_test.json",
                "livecell_coco_test.json",
            ),
        ),
        import_format="livecell",
        import_folder=".",
        license="CC BY-NC 4.0 (Edlund et al., Nature Methods 2021)",
    ),
    "dsb2018": RemoteDataset(
        page="https://bbbc.broadinstitute.org/BBBC038",
        files=(
            # sha256 not published by the Broad Institute; not verified.
            RemoteFile(f"{_BBBC038}/stage1_train.zip", "stage1_train.zip", None, extract=True),
        ),
        import_format="dsb2018",
        import_folder="stage1_train",
        license="CC0 (Caicedo et al., Nature Methods 2019)",
    ),
}
DATASETS["bbbc038"] = DATASETS["dsb2018"]


def _offline_error(url: str, reason: object, page: str, fmt: str) -> CellsynthError:
    return CellsynthError(
        f"cannot reach {url} ({reason}); download it by hand from {page} and pass the folder "
        f"to `cellsynth dataset import {fmt} FOLDER`"
    )


def fetch(
    url: str,
    path: str | os.PathLike,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
    page: str | None = None,
    fmt: str = "FORMAT",
) -> Path:
    """Download ``url`` to ``path`` atomically; verify ``sha256`` when given.

    Raises :class:`CellsynthError` when the server cannot be reached (naming ``page`` as the
    place to get the file by hand) or when the checksum differs. Returns ``path``.
    """
    from tqdm import tqdm

    path = Path(path)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as fh:
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=path.name,
                    disable=not progress,
                    file=sys.stderr,
                ) as bar:
                    while chunk := resp.read(1 << 20):
                        fh.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                fh.flush()
                if sha256 is not None and digest.hexdigest() != sha256.lower():
                    raise CellsynthError(
                        f"{url}: sha256 is {digest.hexdigest()}, expected {sha256}; the download "
                        "is corrupt or the file changed; try again or fetch it by hand"
                    )
    except CellsynthError:
        raise
    except urllib.error.HTTPError as exc:
        raise _offline_error(url, f"HTTP {exc.code}", page or url, fmt) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _offline_error(url, reason, page or url, fmt) from None
    return path


def extract_zip(
    archive: str | os.PathLike, dest: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Unpack ``archive`` into the folder ``dest`` atomically; refuse members that would land
    outside ``dest``."""
    archive, dest = Path(archive), Path(dest)
    try:
        with zipfile.ZipFile(archive) as zf, atomic_dir(dest, overwrite=overwrite) as tmp:
            root = tmp.resolve()
            for member in zf.infolist():
                target = (tmp / member.filename).resolve()
                if root != target and root not in target.parents:
                    raise CellsynthError(
                        f"{archive}: member {member.filename!r} escapes the folder"
                    )
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise CellsynthError(
            f"{archive}: not a valid zip file ({exc}); delete it and retry"
        ) from None
    return dest


def download_dataset(
    name: str,
    dest: str | os.PathLike,
    *,
    timeout: float = 60.0,
    progress: bool = True,
    base_url: str | None = None,
) -> Path:
    """Fetch the public dataset ``name`` (``livecell``, ``dsb2018``) into ``dest``.

    Files already present are kept (archives already extracted are not fetched again), so an
    interrupted download resumes file by file. ``base_url`` replaces the server part of every
    URL (a mirror). Returns the folder to pass to ``cellsynth dataset import``.
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise CellsynthError(
            f"no downloader for {name!r}; known: {', '.join(sorted(DATASETS))} "
            "(other datasets: download by hand and pass the folder)"
        )
    ds = DATASETS[key]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in ds.files:
        url = f.url
        if base_url is not None:
            url = base_url.rstrip("/") + "/" + f.name
        target = dest / f.name
        unpacked = dest / f.name.removesuffix(".zip")
        if f.extract and unpacked.is_dir():
            continue
        if not target.is_file():
            fetch(url, target, f.sha256, timeout, progress, ds.page, ds.import_format)
        if f.extract:
            extract_zip(target, unpacked)
            target.unlink()
    return (dest / ds.import_folder).resolve()
