"""Output directories, interrupts and checksums: what a tool may replace, how it stops, what it refuses to read."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ckptfmt import (
    BackgroundChecksums,
    CheckpointConfig,
    CheckpointError,
    atomic_output_dir,
    check_output_dir,
    load_config,
    write_manifest,
)
from ckptfmt.entry import EXIT_SIGINT, EXIT_SIGPIPE, EXIT_SIGTERM, deferred_interrupts, run_main
from ckptfmt.kinds import directory_kind

from .conftest import llama_dict, random_checkpoint


def _ours(path: Path) -> Path:
    with atomic_output_dir(path) as tmp:
        (tmp / "rank0.safetensors").write_bytes(b"x")
        (tmp / "tokenizer").mkdir()
        (tmp / "tokenizer" / "tokenizer.json").write_text("{}")
        write_manifest(tmp)
    return path


def test_overwrite_replaces_only_our_own_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = _ours(tmp_path / "out")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("y")
        write_manifest(tmp)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "new"]
    (out / "notes.txt").write_text("the user's")  # no longer exactly what the manifest lists
    with pytest.raises(CheckpointError, match="holds other files"), atomic_output_dir(out, overwrite=True):
        pass
    assert (out / "notes.txt").read_text() == "the user's"
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="left alone"):
        check_output_dir(precious, overwrite=True)
    assert (precious / "notes.txt").exists() and not list(tmp_path.glob(".precious.tmp-*"))


def test_empty_directory_is_written_without_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    with atomic_output_dir(tmp_path / "empty") as tmp:
        (tmp / "a").write_text("x")
    assert (tmp_path / "empty" / "a").exists()


@pytest.mark.parametrize("where", ["input", "parent_of_input", "inside_input", "cwd", "parent_of_cwd", "root", "home"])
def test_refused_output_directories(tmp_path, monkeypatch, where):
    src = tmp_path / "models" / "ckpt"
    _ours(src)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    target = {
        "input": src,
        "parent_of_input": tmp_path / "models",
        "inside_input": src / "engine",
        "cwd": Path("."),
        "parent_of_cwd": Path(".."),
        "root": Path("/"),
        "home": Path.home(),
    }[where]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    refused = pytest.raises(CheckpointError, match=r"input|current directory|refusing")
    with refused, atomic_output_dir(target, overwrite=True, inputs=[src]) as tmp:
        (tmp / "x").write_text("x")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_symlink_and_file_outputs_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = _ours(tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(CheckpointError, match="symbolic link"):
        check_output_dir(tmp_path / "link", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        check_output_dir(tmp_path / "file", overwrite=True)


def test_published_directory_has_umask_modes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        out = _ours(tmp_path / "out")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def _corrupt(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_background_checksums_catch_a_flipped_byte(tmp_path):
    ckpt = random_checkpoint(tmp_path / "ckpt", CheckpointConfig.from_dict(llama_dict()))
    BackgroundChecksums(ckpt).wait()  # intact
    rank0 = ckpt / "rank0.safetensors"
    _corrupt(rank0, rank0.stat().st_size - 3)  # tensor data, not the header
    with pytest.raises(CheckpointError, match=r"rank0\.safetensors: sha256 checksum mismatch"):
        BackgroundChecksums(ckpt).wait()
    rank0.write_bytes(rank0.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match=r"rank0\.safetensors: size"):
        BackgroundChecksums(ckpt)
    BackgroundChecksums(tmp_path).wait()  # no manifest: nothing to check


def test_manifest_paths_outside_the_directory_are_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (tmp_path / "secret").write_text("x")
    entry = {"size": 1, "sha256": "0" * 64}
    for rel in ("../secret", str(tmp_path / "secret"), "a/../../secret"):
        (d / "manifest.json").write_text(json.dumps({"version": 1, "files": {rel: entry}}))
        with pytest.raises(CheckpointError, match="not a file inside the directory"):
            BackgroundChecksums(d)
    for bad in ({"size": -1, "sha256": "0" * 64}, {"size": 1, "sha256": "zz"}, {"size": 1.0, "sha256": "0" * 64}, 3):
        (d / "manifest.json").write_text(json.dumps({"version": 1, "files": {"secret": bad}}))
        with pytest.raises(CheckpointError, match="needs a size and a sha256"):
            BackgroundChecksums(d)
    (d / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        BackgroundChecksums(d)


def test_load_config_names_the_kind_of_directory(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(CheckpointError, match="HuggingFace model directory.*ckpt-convert hf"):
        load_config(hf)
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps({"pretrained_config": {}, "build_config": {}}))
    with pytest.raises(CheckpointError, match="engine directory.*--engine_dir"):
        load_config(engine)
    ds = tmp_path / "ds"
    (ds / "global_step10").mkdir(parents=True)
    (ds / "latest").write_text("global_step10")
    with pytest.raises(CheckpointError, match="DeepSpeed"):
        load_config(ds)
    orbax = tmp_path / "orbax"
    orbax.mkdir()
    (orbax / "_CHECKPOINT_METADATA").write_text("{}")
    assert "JAX" in directory_kind(orbax).name
    with pytest.raises(CheckpointError, match=r"missing mandatory field"):  # a checkpoint keeps its own problems
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps({"architecture": "LlamaForCausalLM"}))
        load_config(bad)


def _run_tool(body: str, *args: str) -> subprocess.Popen:
    code = "import sys, time\nfrom ckptfmt.entry import run_main\n" + textwrap.dedent(body)
    code += "\nsys.exit(run_main(main, prog='tool'))\n"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, EXIT_SIGINT), (signal.SIGTERM, EXIT_SIGTERM)])
def test_run_main_exit_codes_on_signals(sig, code):
    p = _run_tool(
        """
        def main(argv):
            print("ready", flush=True)
            time.sleep(30)
        """
    )
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(sig)
    _, err = p.communicate(timeout=20)
    assert p.returncode == code
    assert "Traceback" not in err and err.strip() in ("tool: interrupted", "tool: terminated")


def test_deferred_interrupts_are_raised_after_the_block():
    p = _run_tool(
        """
        from ckptfmt.entry import deferred_interrupts
        def main(argv):
            with deferred_interrupts() as flag:
                print("ready", flush=True)
                while not flag.pending:  # a C callback would poll like this and cancel its work
                    time.sleep(0.01)
                print("seen", flag.signum, flush=True)
            print("not reached", flush=True)
        """
    )
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert out.split() == ["seen", str(int(signal.SIGINT))] and p.returncode == EXIT_SIGINT


def test_closed_pipe_is_quiet():
    tool = "import sys\nfrom ckptfmt.entry import run_main\n"
    tool += "def main(argv):\n    for i in range(10**6): print('line', i)\nsys.exit(run_main(main))"
    p = subprocess.run(
        ["bash", "-o", "pipefail", "-c", '"$0" -c "$1" | head -1', sys.executable, tool],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.stdout.strip() == "line 0" and p.stderr == "" and p.returncode == EXIT_SIGPIPE


def test_deferred_interrupts_is_a_no_op_off_the_main_thread():
    import threading

    seen = []

    def work():
        with deferred_interrupts() as flag:
            seen.append(flag.pending)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [False]


def test_run_main_returns_mains_code():
    assert run_main(lambda argv: 3, []) == 3 and run_main(lambda argv: None, []) == 0


def test_ckptfmt_inspect_into_a_closed_pipe(tmp_path):
    ckpt = random_checkpoint(tmp_path / "ckpt", CheckpointConfig.from_dict(llama_dict(tp=2, pp=3)))
    ckptfmt = Path(sys.executable).with_name("ckptfmt")
    p = subprocess.run(
        ["bash", "-o", "pipefail", "-c", '"$0" inspect --json "$1" | head -1', str(ckptfmt), str(ckpt)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.stdout.strip() == "{" and p.stderr == "" and p.returncode in (0, EXIT_SIGPIPE)


def test_two_runs_on_one_output_exactly_one_publishes(tmp_path):
    out = tmp_path / "out"
    code = (
        "import time\nfrom ckptfmt import atomic_output_dir, write_manifest\n"
        f"with atomic_output_dir({str(out)!r}) as t:\n"
        "    (t / 'first').write_text('x'); write_manifest(t); print('ready', flush=True); time.sleep(3)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "ready"
    with pytest.raises(CheckpointError, match="another run is writing"), atomic_output_dir(out, overwrite=True):
        pass
    assert first.wait(timeout=30) == 0
    assert sorted(p.name for p in out.iterdir()) == ["first", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no lock, no temp dir left


def test_leftovers_of_killed_runs_are_reclaimed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    (tmp_path / ".out.tmp-killed").mkdir()
    (tmp_path / ".out.tmp-killed" / "part").write_text("x")
    old = _ours(tmp_path / "kept")
    old.rename(tmp_path / ".out.old-12345")  # killed between the two renames of --overwrite
    (tmp_path / ".other.tmp-x").mkdir()  # another output's: not ours to touch
    with pytest.raises(CheckpointError, match="already exists"), atomic_output_dir(out):
        pass
    assert (out / "tokenizer" / "tokenizer.json").exists()  # the old output is back under its name
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-x", "out"]


def test_entry_and_errors_import_without_numpy():
    """A tool's signal handlers are in place before the heavy imports (numpy, ml_dtypes) begin."""
    code = "import sys, ckptfmt.entry, ckptfmt.errors; print('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_lazy_exports_resolve():
    import ckptfmt

    assert sorted(ckptfmt.__all__) == sorted(ckptfmt._EXPORTS)
    for name in ckptfmt.__all__:
        assert getattr(ckptfmt, name) is not None


def test_run_main_restores_the_callers_handlers():
    before = signal.getsignal(signal.SIGINT)
    assert run_main(lambda argv: 0, []) == 0
    assert signal.getsignal(signal.SIGINT) is before


def test_claimed_output_keeps_its_scratch_and_a_later_run_reclaims_it(tmp_path, monkeypatch):
    from ckptfmt import claim_output

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    with claim_output(out) as final:
        scratch = tmp_path / ".out.tmp-nemo-1"
        scratch.mkdir()  # e.g. an extracted archive, made while the output is claimed
        with atomic_output_dir(final) as tmp:  # same process: no second lock, the scratch stays
            assert scratch.exists()
            (tmp / "a").write_text("x")
            write_manifest(tmp)
        assert scratch.exists()  # a killed run would leave it here
    with atomic_output_dir(out, overwrite=True) as tmp:  # the next run reclaims it
        assert not scratch.exists()
        write_manifest(tmp)


def test_engine_reader_names_a_checkpoint_or_hf_directory(tmp_path):
    from ckptfmt.engine import load_engine_config

    ckpt = random_checkpoint(tmp_path / "ckpt", CheckpointConfig.from_dict(llama_dict()))
    with pytest.raises(CheckpointError, match="TensorRT-LLM checkpoint, not an engine directory.*ckpt-build"):
        load_engine_config(ckpt)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="HuggingFace model directory"):
        load_engine_config(hf)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_cli_module_imports(tmp_path, sig):
    """run_main("module:function") imports the CLI module with the signals held: one line, never a traceback."""
    (tmp_path / "slow_cli.py").write_text(
        "import sys, time\nprint('importing', flush=True)\ntime.sleep(2)\ndef main(argv):\n    print('ran')\n"
    )
    code = "import sys\nfrom ckptfmt.entry import run_main\nsys.exit(run_main('slow_cli:main', prog='tool'))\n"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    p = subprocess.Popen([sys.executable, "-c", code], **pipes, env=env, text=True)
    assert p.stdout.readline().strip() == "importing"
    p.send_signal(sig)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 128 + sig and "Traceback" not in err and "ran" not in out, err


def test_console_scripts_hold_signals_while_their_cli_modules_import():
    """Every console script of the suite goes through run_main with a "module:function" target (or, for
    ckpt-convert, a CLI module that imports only the standard library at load time)."""
    import importlib.metadata

    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts["ckptfmt"] == "ckptfmt.entry:ckptfmt_console"
    assert scripts["ckpt-build"] == "ckpt_build.console:ckpt_build"
    assert scripts["ckpt-run"] == "ckpt_eval.console:ckpt_run"
    assert scripts["ckpt-summarize"] == "ckpt_eval.console:ckpt_summarize"
    for module in ("ckptfmt.entry", "ckpt_build.console", "ckpt_eval.console", "ckpt_convert.cli"):
        code = f"import sys, {module}; print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
        assert out == "[]", f"{module} loads {out} before run_main holds the signals"


def test_background_checksums_skip_what_other_ranks_hash(tmp_path):
    ckpt = random_checkpoint(tmp_path / "ckpt", CheckpointConfig.from_dict(llama_dict(tp=2)))
    rank1 = ckpt / "rank1.safetensors"
    _corrupt(rank1, rank1.stat().st_size - 3)
    BackgroundChecksums(ckpt, skip=["rank1.safetensors"]).wait()  # rank 0's reader: rank 1 hashes its own file
    with pytest.raises(CheckpointError, match=r"rank1\.safetensors: sha256"):
        BackgroundChecksums(ckpt, skip=["rank0.safetensors"]).wait()
    rank1.write_bytes(rank1.read_bytes()[:-1])  # sizes are still checked for every listed file
    with pytest.raises(CheckpointError, match=r"rank1\.safetensors: size"):
        BackgroundChecksums(ckpt, skip=["rank1.safetensors"])


def test_kind_sniffing_survives_a_hostile_config(tmp_path):
    """The engine reader asks what a directory is before reading it: a config nested too deeply is still one line."""
    from ckptfmt.engine import load_engine_config

    (tmp_path / "config.json").write_text("[" * 100_000)
    assert directory_kind(tmp_path) is None
    with pytest.raises(CheckpointError, match="nested too deeply"):
        load_engine_config(tmp_path)
