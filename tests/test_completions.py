"""Shell completion: the committed scripts match what Typer generates, hold nothing
machine-specific, and the completion protocol answers without importing torch."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from imrseg.cli.completion_scripts import FILES, REGENERATE, completion_script

ROOT = Path(__file__).resolve().parents[1]
COMPLETIONS = ROOT / "completions"

# Modules whose import would make every Tab take seconds.
HEAVY = {"torch", "torchvision", "open_clip", "cv2", "numpy", "PIL", "huggingface_hub", "safetensors"}

# Runs the real entry point under the name a user types, then reports what got imported.
_PROBE = f"""
import sys
sys.argv = ["imrseg"]
from imrseg.cli import main
try:
    main()
except SystemExit:
    pass
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set({sorted(HEAVY)!r}))
sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
"""


def _complete(**env: str) -> list[str]:
    """Completions printed by `imrseg` for the protocol variables in `env`; fails if
    a heavy module was imported on the way."""
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("_IMRSEG_", "_TYPER_", "COMP_"))}
    result = subprocess.run([sys.executable, "-c", _PROBE], env={**run_env, **env}, capture_output=True,
                            text=True, timeout=60)
    heavy = [line for line in result.stderr.splitlines() if line.startswith("HEAVY=")]
    assert heavy, f"completion did not finish:\n{result.stderr}"
    assert heavy[-1] == "HEAVY=", f"completion imported {heavy[-1][6:]}; keep those imports inside the commands"
    return result.stdout.splitlines()


@pytest.mark.parametrize("shell", sorted(FILES))
def test_committed_script_is_current(shell):
    path = COMPLETIONS / FILES[shell]
    stale = f"regenerate it with `{REGENERATE}` (from the repository root) and commit the result"
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing; {stale}"
    assert path.read_text(encoding="utf-8") == completion_script(shell), \
        f"{path.relative_to(ROOT)} differs from the generated {shell} script; {stale}"


@pytest.mark.parametrize("shell", sorted(FILES))
def test_script_holds_nothing_machine_specific(shell):
    script = completion_script(shell)
    for local in {sys.executable, sys.prefix, sys.base_prefix, str(Path.home()), str(ROOT)}:
        assert local not in script
    # It runs `imrseg` from PATH, by name.
    assert "_IMRSEG_COMPLETE=complete_" in script and " imrseg" in script


def test_zsh_tag_is_the_first_line():
    # compinit reads only the first line of each file in fpath.
    assert completion_script("zsh").splitlines()[0] == "#compdef imrseg"


def test_unknown_shell_is_refused():
    with pytest.raises(ValueError, match="bash, zsh, fish"):
        completion_script("powershell")


def test_bash_protocol_offers_commands_without_torch():
    assert "segment" in _complete(COMP_WORDS="imrseg se", COMP_CWORD="1", _IMRSEG_COMPLETE="complete_bash")
    options = _complete(COMP_WORDS="imrseg segment --cl", COMP_CWORD="2", _IMRSEG_COMPLETE="complete_bash")
    assert "--clip-weights" in options


def test_zsh_protocol_offers_subcommands_without_torch():
    answer = "\n".join(_complete(_TYPER_COMPLETE_ARGS="imrseg weights ", _IMRSEG_COMPLETE="complete_zsh"))
    assert answer.startswith("_arguments") and '"download":' in answer and '"import":' in answer


def test_fish_protocol_offers_commands_without_torch():
    lines = _complete(_TYPER_COMPLETE_ARGS="imrseg ze", _TYPER_COMPLETE_FISH_ACTION="get-args",
                      _IMRSEG_COMPLETE="complete_fish")
    assert [line.split("\t")[0] for line in lines] == ["zero-shot"]


@pytest.fixture
def imrseg_on_path(tmp_path):
    """PATH with an `imrseg` that runs this interpreter's imrseg, whatever is installed."""
    exe = tmp_path / "bin" / "imrseg"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\nexec \"{sys.executable}\" -c 'import sys; sys.argv[0] = \"imrseg\"; "
                   "from imrseg.cli import main; main()' \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_script_completes_when_sourced(imrseg_on_path):
    script = (f"source {COMPLETIONS / FILES['bash']}; COMP_WORDS=(imrseg zero); COMP_CWORD=1; "
              "_imrseg_completion imrseg; printf '%s\\n' \"${COMPREPLY[@]}\"")
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PATH": imrseg_on_path}, timeout=60)
    assert result.stdout.split() == ["zero-shot"], result.stderr


@pytest.mark.skipif(shutil.which("fish") is None, reason="needs fish")
def test_fish_script_completes_from_its_folder(imrseg_on_path):
    # fish_complete_path is where fish autoloads completions from, as after installing.
    script = f"set -p fish_complete_path {COMPLETIONS}; complete -C 'imrseg weights im'"
    result = subprocess.run(["fish", "--no-config", "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PATH": imrseg_on_path}, timeout=60)
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["import"], result.stderr


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh")
def test_zsh_script_parses():
    result = subprocess.run(["zsh", "-n", str(COMPLETIONS / FILES["zsh"])], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
