"""``exec-gateway-client``: run a script in a session with live output (``run``), a small
interactive prompt on a session (``repl``), list sessions (``sessions``).

Exit status of ``run``: the cell's status — ok 0, error 1, timeout 124, interrupted (Ctrl-C)
130, memory_exceeded 137, dead 134, restore_failed 1; 2 when the gateway refused or could not
be reached.
"""

from __future__ import annotations

import argparse
import codeop
import sys
from typing import Any

from exec_gateway_client import errors
from exec_gateway_client._base import EXIT_CODES
from exec_gateway_client.gateway import Gateway, Session
from exec_gateway_client.models import Output, Result

EXIT_REFUSED = 2


def _write(stream: Any) -> Any:
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()
    return write


def _show_output(output: Output) -> None:
    image = output.image
    if image is not None:
        print(f"[{image[0]} output, {len(image[1])} bytes]", file=sys.stderr, flush=True)
    elif output.text is not None:
        print(output.text, flush=True)


def _read_line(prompt: str) -> str:
    """Answer the kernel's input() from this process's stdin."""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    return sys.stdin.readline().rstrip("\n")


def _stream(session: Session, code: str, timeout_s: float | None) -> Result:
    result = session.run(code, timeout_s=timeout_s, on_stdout=_write(sys.stdout),
                         on_stderr=_write(sys.stderr), on_output=_show_output,
                         on_input=_read_line)
    if result.error is not None:
        print("\n".join(result.error.traceback) or f"{result.error.ename}: "
              f"{result.error.evalue}", file=sys.stderr)
    elif result.status != "ok":
        lost = "" if result.state_preserved else "; the session's variables were lost"
        print(f"[cell {result.status}{lost}]", file=sys.stderr)
    return result


def cmd_run(gw: Gateway, args: argparse.Namespace) -> int:
    if args.script == "-":
        code = sys.stdin.read()
    else:
        with open(args.script, encoding="utf-8") as f:
            code = f.read()
    # a named session is kept for later calls; an unnamed one is the run's alone
    with gw.session(args.session, keep=args.session is not None or args.keep) as session:
        try:
            result = _stream(session, code, args.timeout)
        except KeyboardInterrupt:  # the cell was interrupted by run()
            print("\n[interrupted]", file=sys.stderr)
            return EXIT_CODES["interrupted"]
    return EXIT_CODES.get(result.status, 1)


def cmd_repl(gw: Gateway, args: argparse.Namespace) -> int:
    with gw.session(args.session, keep=args.session is not None or args.keep) as session:
        print(f"session {session.id} on {gw.config.url} (Ctrl-D quits, Ctrl-C interrupts)",
              file=sys.stderr)
        lines: list[str] = []
        while True:
            try:
                lines.append(input("... " if lines else ">>> "))
            except EOFError:
                print(file=sys.stderr)
                return 0
            except KeyboardInterrupt:
                print("\nKeyboardInterrupt", file=sys.stderr)
                lines = []
                continue
            source = "\n".join(lines)
            try:
                if codeop.compile_command(source, "<cell>", "exec") is None:
                    continue  # an open block: read more lines
            except (SyntaxError, ValueError, OverflowError):
                pass  # the kernel says what is wrong (and takes %magics the parser refuses)
            lines = []
            if not source.strip():
                continue
            try:
                _stream(session, source, args.timeout)
            except KeyboardInterrupt:
                print("\nKeyboardInterrupt", file=sys.stderr)


def cmd_sessions(gw: Gateway, args: argparse.Namespace) -> int:
    for info in gw.sessions():
        print(f"{info.id}\t{info.state}\tgeneration={info.generation}\t"
              f"executions={info.execution_count}\t"
              f"last_activity={info.last_activity:%Y-%m-%d %H:%M:%S}")
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="gateway URL (default: $EXEC_GATEWAY_URL or "
                        "http://127.0.0.1:8888)")
    common.add_argument("--token", help="API token (default: $EXEC_GATEWAY_TOKEN)")
    top = argparse.ArgumentParser(prog="exec-gateway-client", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run a script with live output")
    run.add_argument("script", help="a Python file, or - for stdin")
    repl = sub.add_parser("repl", parents=[common], help="an interactive prompt on a session")
    for p in (run, repl):
        p.add_argument("--session", help="session id (kept afterwards); default: a new "
                       "session deleted at the end")
        p.add_argument("--keep", action="store_true", help="keep an unnamed session")
        p.add_argument("--timeout", type=float, help="seconds per cell (server default if unset)")
    sub.add_parser("sessions", parents=[common], help="list this token's sessions")
    return top


COMMANDS = {"run": cmd_run, "repl": cmd_repl, "sessions": cmd_sessions}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with Gateway(args.url, args.token) as gw:
            return COMMANDS[args.command](gw, args)
    except errors.GatewayError as exc:
        print(f"exec-gateway-client: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"exec-gateway-client: {exc}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
