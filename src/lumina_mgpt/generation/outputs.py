"""Writing generated images: output folders checked before any work, PNGs that appear whole and never
replace another file (unless asked), names that several processes can share."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from PIL import Image

from lumina_mgpt.errors import GenerationError

SLUG_LENGTH = 40


def check_output_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and prove it writable (a probe file is written and removed); GenerationError
    saying why otherwise. Cheap: run it before loading a model, so that a bad --out fails at once."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise GenerationError(f"output folder {folder} is a file; give a folder (it is created when missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".lumina-probe.", suffix=".tmp")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise GenerationError(
            f"cannot write into output folder {folder}: {error.strerror or error}; give a folder that can be created "
            f"and written"
        ) from None
    return folder


def save_png(image: Image.Image, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save a generated image as PNG with its generation settings in the text metadata; returns the path written.

    The file appears whole or not at all: it is written under a unique hidden temporary name beside
    `path`, then given its name. An existing file is kept: the image goes to the next free name
    (`name-1.png`, `name-2.png`, ...), claimed with a hard link, which fails rather than replaces, so
    processes writing one folder never take each other's names; `overwrite=True` replaces `path`.
    OSError (e.g. a full disk) leaves no temporary file behind.
    """
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in image.info.items():
        if isinstance(value, str):
            info.add_text(key, value)
    path = Path(path)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format="PNG", pnginfo=info)
        os.chmod(temp, 0o644)  # mkstemp creates 0600; these are ordinary readable files
        if overwrite:
            os.replace(temp, path)
            return path
        for number in range(1_000_000):
            candidate = path if number == 0 else path.with_name(f"{path.stem}-{number}{path.suffix}")
            try:
                _claim(temp, candidate)
                return candidate
            except FileExistsError:
                continue
        raise GenerationError(f"no free name left for {path}: {path.stem}-1 to -999999 are all taken")
    finally:
        Path(temp).unlink(missing_ok=True)  # the image lives on under its final name


def _claim(temp: str, path: Path) -> None:
    """Give the finished file `temp` the name `path` unless that name exists (FileExistsError): a hard
    link claims the name and the content in one step; where the filesystem has no hard links (some
    network, FUSE and FAT mounts), an exclusive create claims the name and a rename moves the content in."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise
    except OSError:
        with open(path, "x"):
            pass
        os.replace(temp, path)


class OutputFolder:
    """A checked output folder that generated images are written into as they come (see `save_png`);
    a failed write says how many images were written before it."""

    def __init__(self, folder: str | os.PathLike, overwrite: bool = False):
        self.path = check_output_folder(folder)
        self.overwrite = overwrite
        self.written: list[Path] = []

    def save(self, image: Image.Image, name: str) -> Path:
        """Write `image` as `name` in the folder (or the next free name); returns the path written."""
        try:
            path = save_png(image, self.path / name, overwrite=self.overwrite)
        except OSError as error:
            raise GenerationError(
                f"could not write {name} into {self.path}: {error.strerror or error}; the {len(self.written)} "
                f"image(s) written before it are kept"
            ) from None
        self.written.append(path)
        return path


def file_slug(prompt: str, limit: int = SLUG_LENGTH) -> str:
    """The prompt's words, lower case, joined by '-', cut at a word boundary to at most `limit` characters
    (a first word longer than that is cut)."""
    words = re.findall(r"\w+", prompt.lower())
    slug = words[0][:limit] if words else ""
    for word in words[1:]:
        if len(slug) + 1 + len(word) > limit:
            break
        slug = f"{slug}-{word}"
    return slug
