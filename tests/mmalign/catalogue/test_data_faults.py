"""A catalogue of bad data files and bad files inside data (text, VLM, diffusion), each run through
``mmalign train`` (mmalign.cli.main, in process).

Every refused case must exit with code 2, without a traceback, with a message that names the data
file and the line (or record) and says what to do; the data folder is left as it was and nothing is
written into ``output_dir``. Every accepted case must train (exit 0), and where the input needs a
conversion (16-bit, palette, EXIF orientation, CMYK) the pixels are checked too.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from conftest import DEMO_DATA, base_config
from PIL import Image

from mmalign.cli import main
from mmalign_formats.files import decode_image

TEXT_ROWS = [json.loads(line) for line in (DEMO_DATA / "train.jsonl").read_text().splitlines()[:8]]


# --- image files ---------------------------------------------------------------------------------

def png(path: Path, colour=(200, 30, 30), size=(32, 32)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def noise_jpeg(size=(64, 64), seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def truncated_jpeg(path: Path) -> Path:
    whole = noise_jpeg()
    path.write_bytes(whole[:len(whole) // 2])  # the header reads fine; the pixels stop half way
    return path


def bomb_png(path: Path) -> Path:
    """A 70 000 x 70 000 PNG header over a few bytes of pixels: Pillow's decompression-bomb check
    refuses it from the header, before allocating anything."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", 70_000, 70_000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def grey16_png(path: Path) -> Path:
    """16-bit grey: the left half 8000 (~31/255), the right half 60000 (~233/255)."""
    values = np.full((32, 32), 8000, dtype=np.uint16)
    values[:, 16:] = 60000
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    return path


def palette_png_with_transparency(path: Path) -> Path:
    """Palette image: index 0 (black) transparent on the left half, index 1 (red) on the right."""
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (16, 0, 32, 32))
    img.save(path, transparency=0)
    return path


def exif_rotated_jpeg(path: Path) -> Path:
    """Stored 48 wide and 24 high, EXIF orientation 6: shown rotated, 24 wide and 48 high."""
    img = Image.new("RGB", (48, 24), (10, 10, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, exif=exif.tobytes())
    return path


def cmyk_jpeg(path: Path) -> Path:
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path)  # red in CMYK
    return path


def animated_gif(path: Path) -> Path:
    frames = [Image.new("RGB", (32, 32), c) for c in ((250, 0, 0), (0, 0, 250))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


# --- worlds: a data folder, an outside folder, a config --------------------------------------------

@dataclass
class World:
    kind: str  # text, vlm, diffusion
    tmp: Path
    rows: list[dict]
    cfg: dict
    key: str = ""  # the record key that names a file: image (VLM), chosen (diffusion)
    name: str = "pairs.jsonl"

    @property
    def root(self) -> Path:
        return self.tmp / "data"

    @property
    def outside(self) -> Path:
        return self.tmp / "outside"

    @property
    def data(self) -> Path:
        return self.root / self.name

    def write(self) -> Path:
        self.data.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self.cfg["data"]["train"] = str(self.data)
        return self.data

    def set(self, line: int, **fields) -> Path:
        """Change record ``line`` (counted from 1) and write the file again."""
        self.rows[line - 1] = {**self.rows[line - 1], **fields}
        return self.write()


def _text_world(tmp: Path) -> World:
    (tmp / "data").mkdir(parents=True)
    (tmp / "outside").mkdir()
    cfg = base_config(tmp, DEMO_DATA / "tokenizer", tmp / "data" / "pairs.jsonl")
    cfg["train"].update(max_steps=1, callbacks=[])
    world = World("text", tmp, [dict(r) for r in TEXT_ROWS], cfg)
    world.write()
    return world


def _vlm_world(tmp: Path, processor: Path) -> World:
    from mmalign_vlm import shapes

    (tmp / "data" / "images").mkdir(parents=True)
    (tmp / "outside").mkdir()
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    rows = []
    for i in range(4):
        png(tmp / "data" / "images" / f"img-{i}.png", colours[i])
        rows.append({"image": f"images/img-{i}.png", "prompt": "describe",
                     "chosen": "red circle", "rejected": "blue square"})
    cfg = {"output_dir": str(tmp / "run"),
           "model": {"reward": "vlm", "tiny": shapes.TINY_LLAVA, "tokenizer": str(processor)},
           "data": {}, "loss": {"name": "sigmoid", "beta": 0.1},
           "train": {"max_steps": 1, "batch_size": 2, "lr": 1e-3, "log_every": 1, "progress": False,
                     "callbacks": []}}
    world = World("vlm", tmp, rows, cfg, key="image")
    world.write()
    return world


def _diffusion_world(tmp: Path) -> World:
    from mmalign_diffusion import world as shapes_world

    (tmp / "data").mkdir(parents=True)
    (tmp / "outside").mkdir()
    path = shapes_world.write_pair_data(tmp / "data", "pairs", 3, seed=0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    cfg = {"output_dir": str(tmp / "run"),
           "model": {"reward": "diffusion", "tiny": {"architecture": "sd15"}},
           "data": {}, "loss": {"name": "sigmoid", "beta": 5000},
           "train": {"max_steps": 1, "batch_size": 1, "progress": False, "callbacks": []}}
    world = World("diffusion", tmp, rows, cfg, key="chosen")
    world.write()
    return world


@pytest.fixture(scope="module")
def processor(tmp_path_factory) -> Path:
    from mmalign_vlm import shapes

    directory = tmp_path_factory.mktemp("processor")
    shapes.build_processor(directory)
    return directory


def make_world(kind: str, tmp: Path, processor_dir: Callable[[], Path]) -> World:
    if kind == "text":
        return _text_world(tmp)
    if kind == "vlm":
        return _vlm_world(tmp, processor_dir())
    return _diffusion_world(tmp)


# --- running a case ------------------------------------------------------------------------------

def snapshot(directory: Path) -> dict:
    """Every file under ``directory`` with its bytes (symbolic links as their targets)."""
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.is_symlink():
            out[str(p)] = ("link", os.readlink(p))
        elif p.is_file():
            out[str(p)] = p.read_bytes()
    return out


def train_cli(world: World, capsys, *args: str) -> tuple[int, str, str]:
    cfg_path = world.tmp / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(world.cfg))
    before = {**snapshot(world.root), **snapshot(world.outside)}
    code = main(["train", str(cfg_path), *args])
    out, err = capsys.readouterr()
    assert {**snapshot(world.root), **snapshot(world.outside)} == before, "the data was changed"
    return code, out, err


@dataclass
class Case:
    id: str
    kind: str
    setup: Callable[[World], object]  # changes the world; returns the "where" the error must name
    expect: list[str] = field(default_factory=list)  # fragments of the error (or of the output)
    ok: bool = False  # accepted: trains
    check: Callable[[World, str], None] | None = None  # more checks on an accepted case


def assert_refused(case: Case, world: World, capsys) -> None:
    where = case.setup(world)
    code, _, err = train_cli(world, capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("mmalign: error: "), err
    assert str(where) in err and all(e in err for e in case.expect), err
    run = Path(world.cfg["output_dir"])
    assert not run.exists() or not [p for p in run.rglob("*") if p.is_file()], "output_dir written"


def assert_accepted(case: Case, world: World, capsys) -> None:
    case.setup(world)
    code, out, err = train_cli(world, capsys)
    assert code == 0, err
    assert (Path(world.cfg["output_dir"]) / "final").is_dir()
    assert all(e in out for e in case.expect), out
    if case.check:
        case.check(world, out)


# --- the cases: text files -----------------------------------------------------------------------

def _line(world: World, number: int, raw: bytes | str) -> str:
    """Replace line ``number`` of the data file by ``raw`` (bytes as they are)."""
    lines = world.data.read_bytes().splitlines()
    lines[number - 1] = raw if isinstance(raw, bytes) else raw.encode()
    world.data.write_bytes(b"\n".join(lines) + b"\n")
    return f"{world.data}:{number}"


def _json_file(world: World, text: bytes | str) -> Path:
    world.name = "pairs.json"
    world.data.write_bytes(text if isinstance(text, bytes) else text.encode())
    world.cfg["data"]["train"] = str(world.data)
    return world.data


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _deep_json_file(world: World) -> str:
    items = [json.dumps(r) for r in world.rows]
    items[4] = json.dumps({**world.rows[4], "meta": "DEEP"}).replace('"DEEP"', _deep(5000))
    _json_file(world, "[\n" + ",\n".join(items) + "\n]\n")
    return f"{world.data}:record 5 (line 6)"


def _latin1_json_file(world: World) -> str:
    items = [json.dumps(r, ensure_ascii=False) for r in world.rows]
    items[2] = json.dumps({**world.rows[2], "prompt": "café"}, ensure_ascii=False)
    _json_file(world, ("[\n" + ",\n".join(items) + "\n]\n").encode("latin-1"))
    return f"{world.data}:4"


def _fifo(world: World) -> str:
    fifo = world.root / "pipe.jsonl"
    os.mkfifo(fifo)
    world.cfg["data"]["train"] = str(fifo)
    return str(fifo)


def _array_in_jsonl(world: World) -> str:
    world.data.write_text(json.dumps(world.rows, indent=1) + "\n")
    return f"{world.data}:1"


def _jsonl_in_json(world: World) -> str:
    _json_file(world, "".join(json.dumps(r) + "\n" for r in world.rows))
    return f"{world.data}:2"


def _bom_and_crlf(world: World) -> None:
    text = "".join(json.dumps(r) + "\r\n" for r in world.rows)
    world.data.write_bytes(b"\xef\xbb\xbf" + text.encode())


def _bom_json_file(world: World) -> None:
    _json_file(world, b"\xef\xbb\xbf" + json.dumps(world.rows, indent=1).encode())


def _data_key(world: World, **data) -> str:
    world.cfg["data"].update(data)
    return "data.train"


TEXT = [
    Case("text: JSON nested 5000 deep in a JSONL line", "text",
         lambda w: _line(w, 3, json.dumps({**w.rows[2], "meta": 0}).replace("0}", _deep(5000) + "}")),
         ["nested deeper than", "flatten the record"]),
    Case("text: JSON nested 5000 deep in a .json file", "text", _deep_json_file, ["nested deeper than"]),
    Case("text: Latin-1 line in a .jsonl file", "text",
         lambda w: _line(w, 5, json.dumps({**w.rows[4], "prompt": "café"}, ensure_ascii=False).encode("latin-1")),
         ["not valid UTF-8", "byte 0xe9", "Save the file as UTF-8"]),
    Case("text: Latin-1 .json file", "text", _latin1_json_file, ["not valid UTF-8", "Save the file as UTF-8"]),
    Case("text: UTF-16 .jsonl file", "text",
         lambda w: (w.data.write_bytes(w.data.read_text().encode("utf-16")), f"{w.data}:1")[1],
         ["UTF-16", "Save it as UTF-8"]),
    Case("text: an empty data file", "text", lambda w: (w.data.write_bytes(b""), str(w.data))[1],
         ["holds no records", "Point 'data.train' at a file with records"]),
    Case("text: only blank lines (CRLF)", "text", lambda w: (w.data.write_bytes(b"\r\n  \r\n\r\n"), str(w.data))[1],
         ["holds no records"]),
    Case("text: a JSON list in a .jsonl file", "text", _array_in_jsonl,
         ["This looks like a JSON list of records", ".json"]),
    Case("text: JSON Lines in a .json file", "text", _jsonl_in_json,
         ["Extra data", "name the file .jsonl"]),
    Case("text: a record that is a list", "text", lambda w: _line(w, 2, json.dumps([w.rows[1]])),
         ["expected a JSON object", "got list", "belongs in a .json file"]),
    Case("text: a record that is a string", "text", lambda w: _line(w, 2, '"prompt"'),
         ["expected a JSON object", "got str"]),
    Case("text: a record that is a number", "text", lambda w: _line(w, 2, "3.5"),
         ["expected a JSON object", "got float"]),
    Case("text: an integer of 5000 digits", "text",
         lambda w: _line(w, 6, json.dumps({**w.rows[5], "id": 0}).replace(" 0}", " " + "7" * 5000 + "}")),
         ["4300 digits", "write it as a string"]),
    Case("text: a key twice in one record", "text",
         lambda w: _line(w, 7, json.dumps(w.rows[6])[:-1] + ', "chosen": "other"}'),
         ['key "chosen" appears twice', "keep one"]),
    Case("text: a NaN literal", "text",
         lambda w: _line(w, 4, json.dumps({**w.rows[3], "score": float("nan")})),
         ["NaN is not JSON", "write null"]),
    Case("text: a number too large for a float", "text",
         lambda w: _line(w, 4, json.dumps({**w.rows[3], "score": 0}).replace(" 0}", " 1e999}")),
         ["too large for a float"]),
    Case("text: the data file is a directory", "text",
         lambda w: (w.cfg["data"].update(train=str(w.root)), str(w.root))[1], ["is a directory"]),
    Case("text: the data file is a named pipe", "text", _fifo, ["not a regular file"]),
    Case("text: data.train missing", "text", lambda w: _data_key(w, train=None),
         ["data file"]),
    Case("text: a byte-order mark and CRLF line ends", "text", _bom_and_crlf,
         ["8 read, 8 used, 0 skipped"], ok=True),
    Case("text: a .json list with a byte-order mark", "text", _bom_json_file,
         ["8 read, 8 used, 0 skipped"], ok=True),
]


# --- the cases: files that VLM and diffusion records point to --------------------------------------

def _outside_file(world: World) -> Path:
    return png(world.outside / "secret.png", (1, 2, 3))


def _point(world: World, line: int, value, key: str | None = None) -> str:
    world.set(line, **{key or world.key: value})
    return f"{world.data}:{line}"


def _file(world: World, line: int, make: Callable[[Path], object], name: str) -> str:
    make(world.root / name)
    return _point(world, line, name)


def _symlink_out(world: World) -> str:
    os.symlink(_outside_file(world), world.root / "link.png")
    return _point(world, 2, "link.png")


def _symlink_loop(world: World) -> str:
    os.symlink("loop.png", world.root / "loop.png")
    return _point(world, 2, "loop.png")


def _eval_outside(world: World) -> str:
    evaluation = world.root / "eval.jsonl"
    rows = [dict(r) for r in world.rows]
    rows[1][world.key] = str(_outside_file(world))
    evaluation.write_text("".join(json.dumps(r) + "\n" for r in rows))
    world.cfg["data"]["eval"] = str(evaluation)
    return f"{evaluation}:2"


def _allowed_outside(world: World) -> None:
    world.cfg["data"]["allow_outside_paths"] = True
    _point(world, 2, str(_outside_file(world)))


OUTSIDE = "outside the data directory"
ALLOW = "data.allow_outside_paths: true"


def file_cases(kind: str) -> list[Case]:
    """The cases every modality that reads files must pass, for ``kind``."""
    return [
        Case(f"{kind}: an absolute path outside", kind, lambda w: _point(w, 2, str(_outside_file(w))),
             [OUTSIDE, ALLOW]),
        Case(f"{kind}: a '..' path outside", kind,
             lambda w: (_outside_file(w), _point(w, 3, "../outside/secret.png"))[1], [OUTSIDE, ALLOW]),
        Case(f"{kind}: a symbolic link that leads outside", kind, _symlink_out, [OUTSIDE, ALLOW]),
        Case(f"{kind}: a '~' path (the home directory)", kind, lambda w: _point(w, 2, "~/secret.png"),
             [OUTSIDE]),
        Case(f"{kind}: a URL", kind, lambda w: _point(w, 2, "https://example.com/cat.png"),
             ["is a URL", "never downloads"]),
        Case(f"{kind}: a path with a NUL character", kind, lambda w: _point(w, 2, "images/a\u0000.png"),
             ["cannot be resolved"]),
        Case(f"{kind}: a symbolic-link loop", kind, _symlink_loop, ["cannot be resolved"]),
        Case(f"{kind}: a directory", kind, lambda w: _file(w, 2, Path.mkdir, "folder.png"),
             ["is a directory"]),
        Case(f"{kind}: a zero-byte image", kind, lambda w: _file(w, 3, lambda p: p.write_bytes(b""), "empty.png"),
             ["is empty: 0 bytes"]),
        Case(f"{kind}: a text file named .png", kind,
             lambda w: _file(w, 2, lambda p: p.write_text("not an image"), "text.png"),
             ["not a readable image", "no format Pillow reads"]),
        Case(f"{kind}: a truncated JPEG", kind, lambda w: _file(w, 3, truncated_jpeg, "cut.jpg"),
             ["not a readable image", "truncated"]),
        Case(f"{kind}: a decompression-bomb PNG", kind, lambda w: _file(w, 2, bomb_png, "bomb.png"),
             ["too large to decode safely", "decompression bomb"]),
        Case(f"{kind}: an image path outside, in data.eval", kind, _eval_outside, [OUTSIDE]),
        Case(f"{kind}: outside, with data.allow_outside_paths: true", kind, _allowed_outside, ok=True),
        Case(f"{kind}: a 16-bit PNG", kind, lambda w: _file(w, 2, grey16_png, "grey16.png"), ok=True,
             check=lambda w, out: _check_grey16(w.root / "grey16.png")),
        Case(f"{kind}: a palette PNG with transparency", kind,
             lambda w: _file(w, 2, palette_png_with_transparency, "palette.png"), ok=True,
             check=lambda w, out: _check_palette(w.root / "palette.png")),
        Case(f"{kind}: an EXIF-rotated JPEG", kind, lambda w: _file(w, 2, exif_rotated_jpeg, "rotated.jpg"),
             ok=True, check=lambda w, out: _check_rotated(w.root / "rotated.jpg")),
        Case(f"{kind}: a CMYK JPEG", kind, lambda w: _file(w, 2, cmyk_jpeg, "cmyk.jpg"), ok=True,
             check=lambda w, out: _check_cmyk(w.root / "cmyk.jpg")),
        Case(f"{kind}: an animated GIF", kind, lambda w: _file(w, 2, animated_gif, "anim.gif"), ok=True,
             check=lambda w, out: _check_first_frame(w.root / "anim.gif")),
    ]


def _check_grey16(path: Path) -> None:
    pixels = np.asarray(decode_image(path, "t"))
    assert pixels[0, 0].tolist() == [31, 31, 31] and pixels[0, 31].tolist() == [233, 233, 233]


def _check_palette(path: Path) -> None:
    pixels = np.asarray(decode_image(path, "t"))
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[0, 31].tolist() == [255, 0, 0]


def _check_rotated(path: Path) -> None:
    assert decode_image(path, "t").size == (24, 48)


def _check_cmyk(path: Path) -> None:
    red = np.asarray(decode_image(path, "t"))[16, 16].astype(int)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def _check_first_frame(path: Path) -> None:
    assert np.asarray(decode_image(path, "t"))[0, 0].tolist() == [250, 0, 0]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _check_b64_slash(value: str) -> str:
    assert value.startswith("/9j/") and len(value) < 4096  # short enough to be tried as a path
    return value


def _same_bytes(world: World) -> None:
    (world.root / "copy.png").write_bytes((world.root / world.rows[1]["chosen"]).read_bytes())
    world.set(2, rejected="copy.png")


def _pickapic_same_bytes(world: World) -> None:
    image = _b64((world.root / world.rows[0]["chosen"]).read_bytes())
    world.rows.append({"caption": "a cat", "jpg_0": image, "jpg_1": image, "label_0": 1})
    world.write()


VLM = file_cases("vlm") + [
    Case("vlm: one image of a list outside", "vlm",
         lambda w: _point(w, 3, ["images/img-0.png", str(_outside_file(w))]), [OUTSIDE]),
    Case("vlm: an image that is a number", "vlm", lambda w: _point(w, 2, 7), ["must be a file path", "got 7"]),
    Case("vlm: an empty image list", "vlm", lambda w: _point(w, 2, []), ['"image" is an empty list']),
]

DIFFUSION = file_cases("diffusion") + [
    Case("diffusion: chosen and rejected the same bytes under two names", "diffusion", _same_bytes,
         ["skipped      1  chosen identical to rejected (lines 2)"], ok=True),
    Case("diffusion: Pick-a-Pic columns with the same bytes twice", "diffusion", _pickapic_same_bytes,
         ["skipped      1  chosen identical to rejected (lines 4)"], ok=True),
    Case("diffusion: a rejected image outside", "diffusion",
         lambda w: _point(w, 3, str(_outside_file(w)), "rejected"), ['"rejected"', OUTSIDE]),
    Case("diffusion: a truncated JPEG in base64", "diffusion",
         lambda w: _point(w, 2, _b64(noise_jpeg()[:900])), ["not a readable image", "base64"]),
    Case("diffusion: a JPEG in base64 (starts with '/9j/', not an absolute path)", "diffusion",
         lambda w: _point(w, 2, _check_b64_slash(_b64(noise_jpeg((16, 16))))), ["3 read, 3 used"], ok=True),
    Case("diffusion: neither a file nor base64", "diffusion", lambda w: _point(w, 2, "nowhere.png"),
         ["neither an existing image file", "nor base64"]),
]


CASES = TEXT + VLM + DIFFUSION


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_data_fault(case: Case, tmp_path, capsys, request):
    processor_dir = lambda: request.getfixturevalue("processor")  # noqa: E731  (built once, if needed)
    world = make_world(case.kind, tmp_path, processor_dir)
    (assert_accepted if case.ok else assert_refused)(case, world, capsys)


def test_catalogue_size():
    assert len(CASES) >= 35


def test_a_finished_run_survives_a_resume_on_damaged_data(tmp_path, capsys):
    """An earlier run's folder (checkpoint, metrics, final) is left byte for byte when a resume
    finds the data damaged."""
    world = _text_world(tmp_path)
    world.cfg["train"].update(max_steps=2, save_every=1)
    code, _, err = train_cli(world, capsys)
    assert code == 0, err
    run = Path(world.cfg["output_dir"])
    before = snapshot(run)
    where = _line(world, 3, b'{"prompt": "caf\xe9"}')
    world.cfg["train"]["max_steps"] = 3
    code, _, err = train_cli(world, capsys, "--resume")
    assert code == 2 and where in err and "not valid UTF-8" in err, err
    assert snapshot(run) == before
