"""Issue 10, item 11: `ots upscale` refuses to clobber inputs, checks memory and outputs before compute,
continues past bad files in folder mode, Real-ESRGAN-style flags; `ots --version`; a light `ots --help`.
Issue 20 item 5: Real-ESRGAN's flags and defaults (-n, --model_path, -t, --tile_pad, -o results, --suffix out,
--ext auto)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_data_hardening import bomb_png
from test_infer import Nearest

import ots.commands.upscale as upscale_cmd
import ots.infer as infer
from ots.cli import COMMANDS, build_parser, main
from ots.imageio import read_image
from ots.imagewrite import write_image
from ots.memory import estimate_memory

REPO = Path(__file__).resolve().parent.parent


def _img(h=8, w=10, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c)).astype(np.uint8)


@pytest.fixture
def model(monkeypatch):
    m = Nearest(2)
    monkeypatch.setattr(upscale_cmd, "load_map", lambda path, device="cpu": m)
    return m


def _run(*args):
    return main(["upscale", *map(str, args), "--checkpoint", "ckpt.pt", "--no-progress"])


def test_same_input_and_output_is_refused_unless_overwrite(tmp_path, model, capsys):
    src = write_image(tmp_path / "a.png", _img())
    before = src.read_bytes()
    assert _run(src, "-o", src) == 2
    err = capsys.readouterr().err
    assert "is an input file" in err and "--overwrite" in err and err.count("\n") == 1
    assert src.read_bytes() == before
    # folder mode whose names collide with the inputs
    assert _run(tmp_path, "-o", tmp_path, "--suffix", "", "--ext", "auto") == 2
    assert "is an input file" in capsys.readouterr().err and src.read_bytes() == before
    assert _run(src, "-o", src, "--overwrite") == 0
    assert read_image(src).shape == (16, 20, 3)


def test_memory_is_estimated_up_front(tmp_path, model, monkeypatch, capsys):
    def boom(*a, **k):
        raise AssertionError("computed although the image cannot fit")

    monkeypatch.setattr(infer, "upscale_array", boom)
    big = tmp_path / "big.png"
    big.write_bytes(bomb_png(9000, 9000))  # 81 MP: under the bomb limit, far over 2 GiB once x2 in float
    assert _run(big, "-o", tmp_path / "o.png", "--max-memory-gb", "2") == 2
    err = capsys.readouterr().err
    assert "big.png: 9000x9000 -> 18000x18000 needs about" in err and "more than the 2.0 GiB available" in err
    assert err.count("\n") == 1 and not (tmp_path / "o.png").exists()
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(20000, 20000))
    assert _run(bomb, "-o", tmp_path / "o.png") == 2
    err = capsys.readouterr().err
    assert "too large" in err and "Traceback" not in err and err.count("\n") == 1


def test_memory_estimate_bounds_the_real_peak(tmp_path):
    """The estimate is an upper bound of the measured peak RSS growth (fresh process, 512x512 -> x4)."""
    code = (
        "import numpy as np, torch, torch.nn.functional as F\n"
        "from torch import nn\n"
        "from ots.infer import upscale_array\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key): return int(line.split()[1]) * 1024\n"
        "class N(nn.Module):\n"
        "    scale = 4\n"
        "    def forward(self, x): return F.interpolate(x, scale_factor=4, mode='nearest')\n"
        "torch.set_num_threads(1)\n"
        "img = np.zeros((512, 512, 3), np.uint8)\n"
        "upscale_array(N(), img[:8, :8], tile=64, overlap=8)\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # reset the peak (VmHWM) to the current RSS\n"
        "r0 = status('VmRSS')\n"
        "upscale_array(N(), img, tile=64, overlap=8)\n"
        "print(status('VmHWM') - r0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    peak = int(r.stdout.strip())
    est = estimate_memory(512, 512, 3, 4, tile=64, batch_tiles=4, n_features=3)
    assert 50 << 20 < peak <= est <= 4 * peak, (peak, est)  # 4096x4096 float buffers: >= 50 MiB for real


def test_unwritable_output_fails_before_loading_or_compute(tmp_path, monkeypatch, capsys):
    def no_load(*a, **k):
        raise AssertionError("model loaded although the output cannot be written")

    monkeypatch.setattr(upscale_cmd, "load_map", no_load)
    src = write_image(tmp_path / "a.png", _img())
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    assert _run(src, "-o", blocker / "sub" / "o.png") == 2
    err = capsys.readouterr().err
    assert err.startswith("ots: error: cannot write outputs to") and err.count("\n") == 1


def test_folder_continues_past_bad_files_and_reports_them_all(tmp_path, model, capsys):
    src = tmp_path / "in"
    write_image(src / "a.png", _img(seed=1))
    (src / "b.png").write_bytes(b"not a png at all")
    write_image(src / "c.png", _img(seed=3))
    (src / "d.png").write_bytes(bomb_png(20000, 20000))
    rc = _run(src, "-o", tmp_path / "out")
    out, err = capsys.readouterr()
    assert rc == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_out.png", "c_out.png"]
    assert out.split() == [str(tmp_path / "out" / "a_out.png"), str(tmp_path / "out" / "c_out.png")]
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("ots: error: ") for line in lines)
    assert "b.png" in lines[0] and "d.png" in lines[1] and "too large" in lines[1]
    assert "2 of 4 images failed" in lines[2] and "Traceback" not in err


def test_real_esrgan_style_flags(tmp_path, model, capsys):
    src = tmp_path / "in"
    write_image(src / "a.png", _img(8, 10, 4))
    write_image(src / "b.png", _img(6, 6, 3))
    rc = main(["upscale", "-i", str(src / "a.png"), "--input", str(src / "b.png"), "-o", str(tmp_path / "out"),
               "-s", "3", "--suffix", "up", "--ext", "jpg", "--fp32", "--tile", "4", "--checkpoint", "c.pt",
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    a, b = read_image(tmp_path / "out" / "a_up.jpg"), read_image(tmp_path / "out" / "b_up.jpg")
    assert a.shape == (24, 30, 3) and b.shape == (18, 18, 3)  # outscale 3 with a x2 map; JPEG has no alpha
    rc = main(["upscale", "-i", str(src / "b.png"), "-o", str(tmp_path / "o2"), "--ext", "auto", "--suffix", "",
               "--checkpoint", "c.pt", "--no-progress"])
    assert rc == 0 and read_image(tmp_path / "o2" / "b.png").shape == (12, 12, 3)


def test_version_and_a_light_help(capsys):
    import ots

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ots {ots.__version__}"
    code = ("import sys, time; t = time.perf_counter()\nfrom ots.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint(time.perf_counter() - t, 'torch' in sys.modules,"
            " 'numpy' in sys.modules, file=sys.stderr)")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    wall = time.perf_counter() - t0
    inner, torch_loaded, numpy_loaded = r.stderr.split()
    assert "upscale" in r.stdout and torch_loaded == "False" and numpy_loaded == "False"
    assert float(inner) < 0.5 and wall < 3.0, (inner, wall)


def test_lazy_help_lines_match_the_modules():
    """The verb list `ots --help` shows without importing the modules says what the modules register."""
    full = build_parser(full=True)
    sub = next(a for a in full._actions if a.__class__.__name__ == "_SubParsersAction")
    real = {c.dest: c.help for c in sub._choices_actions}
    assert real == {verb: help_ for verb, (_, help_) in COMMANDS.items()}


# -- issue 20 item 5: Real-ESRGAN's flags and defaults ----------------------------------------------------------
@pytest.fixture
def spy(monkeypatch):
    """Records what the CLI hands the engine: the map file it loads and upscale_files' keyword arguments."""
    seen = {}
    monkeypatch.setattr(upscale_cmd, "load_map", lambda path, device="cpu": seen.__setitem__("map", path) or Nearest(2))
    real = infer.upscale_files

    def upscale_files(model, files, output, **kw):
        seen.update(kw)
        return real(model, files, output, **kw)

    monkeypatch.setattr(infer, "upscale_files", upscale_files)
    return seen


def test_real_esrgan_defaults_and_named_maps(tmp_path, monkeypatch, spy, capsys):
    """`ots upscale -n NAME` as `inference_realesrgan.py -n NAME`: ./inputs -> ./results/<name>_out.<input ext>."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OTS_MODELS", str(tmp_path / "maps"))
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "ots-sr@challenger.pt").write_bytes(b"a checkpoint")
    write_image(tmp_path / "inputs" / "a.jpg", _img(6, 6, 3))
    b16 = (_img(5, 4, 3).astype(np.uint16) * 257)
    write_image(tmp_path / "inputs" / "b.png", b16)
    assert main(["upscale", "-n", "ots-sr@challenger", "-t", "0", "--no-progress"]) == 0, capsys.readouterr().err
    assert spy["map"] == str(tmp_path / "maps" / "ots-sr@challenger.pt") and spy["tile"] is None
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["a_out.jpg", "b_out.png"]
    assert np.array_equal(read_image(tmp_path / "results" / "b_out.png"), b16.repeat(2, 0).repeat(2, 1))
    # --tile_pad P: neighbouring tiles share 2P LR px; -g N is --device cuda:N; the OTS spellings still work
    assert main(["upscale", "inputs/a.jpg", "--model", "m.pt", "-o", "o2", "-t", "8", "--tile_pad", "3",
                 "--no-progress"]) == 0
    assert (spy["tile"], spy["overlap"], spy["map"]) == (8, 6, "m.pt") and (tmp_path / "o2" / "a_out.jpg").exists()
    for flags in (["--checkpoint", "m.pt"], ["--model-path", "m.pt"], ["--model_path", "m.pt"]):
        args = build_parser("upscale").parse_args(["upscale", "x.png", *flags, "--overlap", "4", "--tile", "9"])
        assert (args.checkpoint, args.overlap, args.tile) == ("m.pt", 4, 9)
    assert build_parser("upscale").parse_args(["upscale", "-g", "1", "--tile-pad", "2"]).gpu_id == 1


@pytest.mark.parametrize("argv, expected", [
    (["-n", "nope"], "no map named 'nope' in"),
    (["-n", "models:/ots-sr@champion"], "python -m pipelines.registry fetch models:/ots-sr@champion -n NAME"),
    (["-n", "ots-sr@challenger", "--model_path", "m.pt"], "not both"),
    ([], "no map given: --model_path FILE"),
    (["--tile_pad", "3", "--overlap", "4", "--model_path", "m.pt"], "--tile_pad P is --overlap 2P"),
    (["--face_enhance"], "--face_enhance is a Real-ESRGAN option ots does not have (GFPGAN"),
    (["-dn", "0.5"], "-dn is a Real-ESRGAN option ots does not have"),
])
def test_real_esrgan_flag_errors_are_one_line(tmp_path, monkeypatch, spy, capsys, argv, expected):
    monkeypatch.setenv("OTS_MODELS", str(tmp_path))
    (tmp_path / "ots-sr@challenger.pth").write_bytes(b"x")  # .pth, as Real-ESRGAN names its weights
    src = write_image(tmp_path / "in.png", _img())
    with pytest.raises(SystemExit) if argv[:1] in (["--face_enhance"], ["-dn"]) else contextlib.nullcontext() as e:
        rc = main(["upscale", str(src), "-o", str(tmp_path / "out"), *argv, "--no-progress"])
    err = capsys.readouterr().err
    assert (e.value.code if e else rc) == 2 and expected in err and err.count("\n") == 1, err
    assert "map" not in spy
    if argv == ["-n", "nope"]:
        assert "has: ots-sr@challenger" in err
