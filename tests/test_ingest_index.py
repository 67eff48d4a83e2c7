"""What the index gives routing: the same view of a series as reading its files does.

Routing reads studies from the index (``routers.attributes.study_view_from_index``) and, for
``routes explain PATH``, from files. These tests store instances the way the SCP does (the
C-STORE dataset bytes through ``parse_header`` into ``Index.store``) and check that body-part
codes and enhanced multi-frame geometry reach routing from the index as they do from files.
"""

from __future__ import annotations

import sqlite3
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from node.ingest.header import parse_header
from node.ingest.index import Index, StoredInstance
from routers.attributes import StudyView, study_view_from_index, study_views_from_paths
from routers.check import check_text
from routers.matcher import RouteTable, match_study

ENHANCED = "mr-enhanced-multiframe"
#: Enhanced instances whose geometry sits only in the shared or only in the per-frame groups.
ENHANCED_FILES = (
    "misc/eCT_Supplemental.dcm",  # Enhanced CT, shared groups
    "misc/MOVEKNEE.dcm",  # shared groups
    "siemens-xa10/6_1.dcm",  # per-frame groups only
    "philips/IM_0027_fMAP.dcm",  # per-frame groups only, 64 frames
)


def _table(routes: str) -> RouteTable:
    report = check_text(routes, "routes.yaml", {"probe": ("1.0",)}, {"pacs": False})
    assert report.table is not None, [d.format() for d in report.diagnostics]
    return report.table


def _index_part10(index: Index, path: Path, relpath: str) -> None:
    """Store one Part-10 file as the SCP stores a C-STORE: dataset bytes, no file meta."""
    meta = read_file_meta_info(path)
    data = path.read_bytes()
    dataset = data[132 + 12 + meta.FileMetaInformationGroupLength :]
    header = parse_header(
        dataset,
        str(meta.TransferSyntaxUID),
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
    )
    index.store(StoredInstance(header, relpath, len(data), 1_700_000_000.0, "SCANNER", "AINODE"))


def _index_view(tmp_path: Path, files: list[Path]) -> StudyView:
    database = tmp_path / "ainode.sqlite3"
    index = Index(database)
    for number, path in enumerate(files):
        _index_part10(index, path, f"{number}.dcm")
    index.close()
    conn = sqlite3.connect(database)
    conn.row_factory = sqlite3.Row
    try:
        study_uid = conn.execute("SELECT study_instance_uid FROM studies").fetchone()[0]
        view = study_view_from_index(conn, study_uid)
    finally:
        conn.close()
    assert view is not None
    return view


def _write(ds: Dataset, path: Path, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path.write_bytes(buffer.getvalue())
    return path


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_anatomic_region_code_alone_routes_from_the_index(
    tmp_path: Path, transfer_syntax: str
) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SeriesDescription = "routine 5mm"  # no body-part word anywhere else
    ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Thorax")])
    path = _write(ds, tmp_path / "coded.dcm", transfer_syntax)
    table = _table(
        "routes:\n  - name: chest\n    when: {modality: CT, body_part: chest}\n"
        "    run: [probe]\n    send_to: [pacs]\n"
    )

    from_index = _index_view(tmp_path, [path])
    (from_files,) = study_views_from_paths([path])

    region = table.body_parts.decide(from_index.series[0].attributes)
    assert (region.region.value, region.source.value) == ("chest", "AnatomicRegionSequence")
    assert region == table.body_parts.decide(from_files.series[0].attributes)
    assert [m.route_name for m in match_study(table, from_index)] == ["chest"]


@pytest.mark.corpus
@pytest.mark.parametrize("relpath", ENHANCED_FILES)
def test_enhanced_geometry_reaches_the_index_from_functional_groups(
    corpus: Path, tmp_path: Path, relpath: str
) -> None:
    path = corpus / ENHANCED / relpath
    ds = dcmread(path, stop_before_pixels=True)
    assert "ImageOrientationPatient" not in ds and "SliceThickness" not in ds
    groups = ds.get("SharedFunctionalGroupsSequence") or []
    if not groups or "PlaneOrientationSequence" not in groups[0]:
        groups = ds.PerFrameFunctionalGroupsSequence
    expected_orientation = tuple(
        float(v) for v in groups[0].PlaneOrientationSequence[0].ImageOrientationPatient
    )
    expected_thickness = float(groups[0].PixelMeasuresSequence[0].SliceThickness)

    series = _index_view(tmp_path, [path]).series[0]
    (from_files,) = study_views_from_paths([path])

    assert series.orientation == pytest.approx(expected_orientation)
    assert series.slice_thickness == pytest.approx(expected_thickness)
    assert series.orientation == from_files.series[0].orientation
    assert series.slice_thickness == from_files.series[0].slice_thickness
    assert series.image_count == int(ds.NumberOfFrames)


@pytest.mark.corpus
def test_enhanced_ct_series_filters_work_from_the_index(corpus: Path, tmp_path: Path) -> None:
    view = _index_view(tmp_path, [corpus / ENHANCED / "misc" / "eCT_Supplemental.dcm"])
    routes = (
        "routes:\n"
        "  - name: thick-axial\n    when: {modality: CT}\n"
        "    series: {orientation: axial, slice_thickness_min: 8, slice_thickness_max: 12}\n"
        "    run: [probe]\n    send_to: [pacs]\n"
        "  - name: thin-axial\n    when: {modality: CT}\n"
        "    series: {orientation: axial, slice_thickness_max: 5}\n"
        "    run: [probe]\n    send_to: [pacs]\n"
        "  - name: sagittal\n    when: {modality: CT}\n"
        "    series: {orientation: sagittal}\n"
        "    run: [probe]\n    send_to: [pacs]\n"
    )
    assert [m.route_name for m in match_study(_table(routes), view)] == ["thick-axial"]


def test_defined_length_per_frame_groups_read_only_as_far_as_needed(tmp_path: Path) -> None:
    """pydicom leaves a defined-length sequence as raw bytes after a header-only read: the
    first frame's groups are read from them (the later frames say otherwise, on purpose)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.NumberOfFrames = 3
    frames = []
    for number in range(3):
        plane = Dataset()
        plane.ImageOrientationPatient = [0, 1, 0, 0, 0, -1] if number == 0 else [1, 0, 0, 0, 1, 0]
        measures = Dataset()
        measures.SliceThickness = "3.5" if number == 0 else "9"
        frame = Dataset()
        frame.PlaneOrientationSequence = Sequence([plane])
        frame.PixelMeasuresSequence = Sequence([measures])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    path = _write(ds, tmp_path / "enhanced.dcm")
    raw = dcmread(path, stop_before_pixels=True).get_item("PerFrameFunctionalGroupsSequence")
    assert isinstance(raw.value, bytes), "pydicom wrote an undefined length: test is moot"

    series = _index_view(tmp_path, [path]).series[0]

    assert series.orientation == (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    assert series.slice_thickness == 3.5


class _FullDiskConnection:
    """A connection whose WAL checkpoint fails as on a full disk; the rest is the real one."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, *args: object) -> object:
        if "wal_checkpoint" in sql:
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, *args)

    def close(self) -> None:
        self._conn.close()


def test_a_checkpoint_refused_by_a_full_disk_still_closes_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = Index(tmp_path / "index.sqlite3")
    real = index._conn
    index._conn = _FullDiskConnection(real)  # type: ignore[assignment]
    assert index.close() is False
    assert "database or disk is full" in caplog.text
    with pytest.raises(sqlite3.ProgrammingError):
        real.execute("SELECT 1")  # closed all the same


def test_a_checkpoint_held_back_by_a_reader_is_not_taken_for_a_flush(tmp_path: Path) -> None:
    """SQLite answers a blocked checkpoint with busy=1 instead of an error: close must say the
    WAL was not flushed, so no clean-stop marker is written."""
    index = Index(tmp_path / "index.sqlite3")
    reader = sqlite3.connect(tmp_path / "index.sqlite3", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM instances").fetchone()  # holds this snapshot
    index._conn.execute("PRAGMA busy_timeout=0")  # the test does not wait the real 30 s
    index._conn.execute("CREATE TABLE written_after_the_reader(x)")
    try:
        assert index.close() is False
    finally:
        reader.close()
