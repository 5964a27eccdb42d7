"""The ``ckpt-build`` console script: the CLI module (numpy at load time) is imported with Ctrl-C and SIGTERM held
by ``ckptfmt.entry.run_main``, so a signal at any moment ends the tool in one line."""

from __future__ import annotations

from ckptfmt.entry import run_main


def ckpt_build() -> int:
    code = run_main("ckpt_build.cli:_main", prog="ckpt-build")
    from .interrupts import exit_code

    return exit_code(code)
