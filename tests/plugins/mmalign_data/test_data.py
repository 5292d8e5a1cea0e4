import io

import numpy as np
import pytest
from PIL import Image

from conftest import write_jsonl
from mmalign.data import Record
from mmalign_data.preparing import prepare_examples
from mmalign_data.reading import read_records
from mmalign.errors import DataError, SkipRecord
from mmalign_formats.files import decode_image, resolve_data_path, to_rgb8
from mmalign_formats import read_jsonl


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_records(str(tmp_path / "x.jsonl"), "auto", "data.train")
    (tmp_path / "x.txt").write_text("a,b\n")
    with pytest.raises(DataError, match="data.format"):
        read_records(str(tmp_path / "x.txt"), "auto", "data.train")


class _Plugin:
    def prepare(self, record, paired):
        if record.fields.get("skip"):
            raise SkipRecord("chosen identical to rejected")
        return record.fields


def test_prepare_counts_skips_and_strict_turns_them_into_errors(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"a": 1}, {"skip": True}, {"skip": True}])
    records = read_jsonl(path)
    examples, report = prepare_examples(_Plugin(), records, paired=True, strict=False, path=str(path))
    assert len(examples) == 1 and report.read == 3 and report.used == 1
    assert report.skipped == {"chosen identical to rejected": 2}
    assert "skipped      2" in report.table()
    with pytest.raises(DataError, match=r"d.jsonl:2: chosen identical"):
        prepare_examples(_Plugin(), records, paired=True, strict=True, path=str(path))


def test_a_reader_that_raises_a_library_error_is_a_data_error_naming_the_file(tmp_path, monkeypatch):
    from mmalign.plugins import registry

    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n')
    entry = registry().entry("datasets", "jsonl")
    monkeypatch.setattr(entry, "obj", lambda p: (_ for _ in ()).throw(KeyError("row group 3")))
    with pytest.raises(DataError, match=rf"Cannot read data file '{path}' \(from 'data.train'\): KeyError"):
        read_records(str(path), "jsonl", "data.train")


# --- mmalign_formats.files -------------------------------------------------------------------------------------

def test_tilde_is_the_home_directory_and_so_outside(tmp_path):
    record = Record({}, "d.jsonl:1", tmp_path)
    with pytest.raises(DataError, match="outside the data directory"):
        resolve_data_path(record, "~/x.png", "image")
    with pytest.raises(DataError, match="not found"):  # allowed out: then only missing
        resolve_data_path(record, "~/surely-not-here.png", "image", allow_outside=True)


def test_record_allow_outside_is_what_prepare_examples_was_given(tmp_path):
    (tmp_path / "secret.png").write_bytes(b"x")
    (tmp_path / "data").mkdir()
    path = write_jsonl(tmp_path / "data" / "d.jsonl", [{"image": "../secret.png"}])

    class Reads:
        def prepare(self, record, paired):
            return resolve_data_path(record, record.fields["image"], "image")

    with pytest.raises(DataError, match="outside the data directory"):
        prepare_examples(Reads(), read_jsonl(path), paired=True, strict=False, path=str(path))
    examples, _ = prepare_examples(Reads(), read_jsonl(path), paired=True, strict=False,
                                   path=str(path), allow_outside=True)
    assert examples == [tmp_path / "secret.png"]


def test_sixteen_bit_and_float_grey_are_scaled_not_clipped():
    grey16 = Image.fromarray(np.array([[0, 257, 32768, 65535]], dtype=np.uint16))
    assert np.asarray(to_rgb8(grey16))[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.asarray(grey16.convert("RGB"))[0, :, 0].tolist() == [0, 255, 255, 255]  # Pillow clips
    grey_float = Image.fromarray(np.array([[0.0, 0.5, 1.0, 7.0]], dtype=np.float32))
    assert np.asarray(to_rgb8(grey_float))[0, :, 0].tolist() == [0, 128, 255, 255]


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    assert list(to_rgb8(rgba).getdata()) == [(255, 255, 255), (255, 0, 0)]
    assert list(to_rgb8(Image.new("LA", (1, 1), (0, 128))).getdata()) == [(127, 127, 127)]


def test_pillows_bomb_warning_range_is_refused_too(tmp_path, monkeypatch):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")  # 1600 pixels: more than the limit, < 2x
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="d.jsonl:4: image '.*a.png' is too large to decode safely"):
        decode_image(tmp_path / "a.png", "d.jsonl:4")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the user's choice: no limit
    assert decode_image(tmp_path / "a.png", "t").size == (40, 40)


def test_an_image_is_decoded_in_full_not_only_its_header(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:1500])
    with Image.open(tmp_path / "cut.jpg") as img:
        img.verify()  # what the diffusion plugin used to check: passes
    with pytest.raises(DataError, match="t:1: not a readable image .*truncated"):
        decode_image(tmp_path / "cut.jpg", "t:1")


def test_data_content_identity_of_a_folder_and_a_dataset_id(tmp_path):
    from mmalign_data.reading import data_sha256
    from mmalign_runs.run_identity import file_sha256

    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "state.json").write_text("{}")
    before = data_sha256(str(tmp_path / "saved"), file_sha256)
    (tmp_path / "saved" / "state.json").write_text('{"x": 1}')
    assert data_sha256(str(tmp_path / "saved"), file_sha256) != before
    ids = {data_sha256(f"hf://org/name?revision={r}", file_sha256) for r in ("a", "b")}
    assert len(ids) == 2
