"""``inspect``: one-object figure from a real catalog and a real survey store."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from survey_infer.cli import UserError, main as cli_main
from survey_infer.catalog.inspect import inspect_object
from survey_infer.instrument import load_instrument
from survey_infer.io.survey_store import create_survey
from survey_infer.lines import line

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_export import write_catalog  # noqa: E402  (the shared catalog builder)

N = 6


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    inst = load_instrument("moons_lr")
    wave = inst.wave
    sky = np.zeros(inst.n_wave, np.uint8)
    sky[::40] = 1  # a fake sky mask: every 40th channel
    w = create_survey(d / "store.zarr", N, inst, chunk_objects=4, with_mask=True, sky_mask=sky,
                      columns={"ra": "float64", "dec": "float64"})
    rng = np.random.default_rng(0)
    z = np.linspace(1.1, 1.5, N)
    flux = 1.0 + 0.1 * rng.standard_normal((N, inst.n_wave))
    for i, zi in enumerate(z):
        flux[i] += 8 * np.exp(-0.5 * ((wave - line("Halpha").observed(zi)) / 4.0) ** 2)
    ivar = np.full_like(flux, 100.0)
    ivar[:, 5000:5200] = 0.0  # a dead stretch
    mask = np.zeros(flux.shape, np.uint8)
    mask[:, 9000:9050] = 1
    w.write(0, {"flux": flux, "ivar": ivar, "mask": mask, "object_id": np.arange(1000, 1000 + N),
                "ra": np.zeros(N), "dec": np.zeros(N)})
    store = w.commit()
    cat = write_catalog(d / "catalog.zarr", n=N, nz=300, chunk=4, nodata=(2,), input_store=str(store), z_true=z)
    nostore = write_catalog(d / "catalog_nostore.zarr", n=N, nz=300, chunk=4, nodata=(2,))
    return {"dir": d, "store": store, "catalog": cat, "nostore": nostore}


def _png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.shape[0] > 500 and img.shape[1] > 1000
    assert not list(path.parent.glob(f".{path.name}.*"))


def test_inspect_writes_png_from_recorded_store(files, tmp_path):
    out = inspect_object(files["catalog"], 1001, tmp_path / "obj.png")
    _png_ok(out)


def test_inspect_nodata_object_and_cli_with_input(files, tmp_path, capsys):
    out = tmp_path / "sub" / "nodata.png"
    rc = cli_main(["inspect", str(files["nostore"]), "--object", "1002", "--input", str(files["store"]),
                   "--out", str(out)])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    _png_ok(out)


def test_inspect_missing_object_fails_clearly(files, tmp_path, capsys):
    with pytest.raises(UserError, match=r"object 999 is not in catalog .*6 objects"):
        inspect_object(files["catalog"], 999, tmp_path / "x.png")
    rc = cli_main(["inspect", str(files["catalog"]), "--object", "999", "--out", str(tmp_path / "x.png")])
    assert rc == 2 and "object 999 is not in catalog" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_inspect_needs_a_store(files, tmp_path):
    with pytest.raises(UserError, match="--input"):
        inspect_object(files["nostore"], 1001, tmp_path / "x.png")
    with pytest.raises(FileNotFoundError):
        inspect_object(files["nostore"], 1001, tmp_path / "x.png", input_store=tmp_path / "nope.zarr")


def test_flags_decoded_with_the_catalogs_table():
    """Descriptions come from the catalog's own bit table: its model's thresholds, its own bit meanings."""
    from survey_infer import flags
    from survey_infer.catalog.inspect import flag_lines

    zw = flags.ZWarn.SCREENED | flags.ZWarn.POORDATA | (1 << 17)
    text = "\n".join(flag_lines(zw, flags.bit_table({"quality": 0.77})))
    assert "z_reliable = False" in text and "SCREENED (30)" in text and "below 0.77" in text
    assert "POORDATA (11)" in text and "USER17" in text and "{" not in text
    assert "z_reliable = True" in flag_lines(1 << 17)[0] and "no flags set" in flag_lines(0)[1]
    old = [{"name": "NODATA", "bit": 0, "value": 1, "bad": True, "description": "no valid pixel"}]
    assert "BAD  NODATA (0): no valid pixel" in "\n".join(flag_lines(1, old))  # an old catalog's meaning


def test_command_line_lives_in_cli():
    """The library modules of the catalog room know nothing of argparse; the commands are cli.inspect/cli.export."""
    import inspect as pyinspect

    import survey_infer.catalog.export as export_pkg
    import survey_infer.catalog.inspect as lib
    from survey_infer.cli import export as cli_export, inspect as cli_inspect

    for mod in (lib, export_pkg):
        assert not hasattr(mod, "register") and "argparse" not in pyinspect.getsource(mod)
    assert callable(cli_inspect.register) and callable(cli_inspect.run)
    assert callable(cli_export.register) and callable(cli_export.run)


def test_inspect_input_that_is_not_a_survey_store(files, tmp_path):
    """--input must be a survey store: a catalog given instead is named in one line (what it lacks)."""
    with pytest.raises(UserError, match=r"survey store .*catalog\.zarr lacks variable\(s\) flux, ivar, wave"):
        inspect_object(files["catalog"], 1001, tmp_path / "x.png", input_store=files["catalog"])
    assert not (tmp_path / "x.png").exists()
