# The persistent Python interpreter behind `llmctl agent` (embedded in the binary and run
# as `python3 -I -u -c <this>` inside the sandbox).
#
# Protocol: one JSON object per line on fd 3 (commands), one JSON object per line on
# fd 4 (results). The code's own stdout/stderr are fds 1 and 2, a pipe the agent reads
# and caps, so nothing the code prints can break the protocol or fill the agent's memory.
#   {"op": "exec", "code": "...", "cpu_s": 30}  -> {"ok": true|false}
#   {"op": "tools", "code": "...", "cpu_s": 30} -> {"ok": ..., "stubs": "def f(x):\n    ..."}
# Like a notebook cell, a final bare expression is printed (its repr) unless it is None.
import ast
import inspect
import json
import linecache
import os
import resource
import sys
import traceback

DRIVER_PID = os.getpid()
commands = os.fdopen(3, "r", encoding="utf-8", errors="replace")
results = os.fdopen(4, "w", encoding="utf-8")
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
cell_count = 0


def set_cpu_budget(seconds):
    # The soft CPU limit is cumulative for the process: move it to "now + seconds" so each
    # execution gets the same budget (SIGXCPU ends the interpreter when it is spent).
    if not seconds:
        return
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = int(used.ru_utime + used.ru_stime) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = spent + int(seconds)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def print_user_traceback(exc):
    # Only the frames of the cell's code: the driver's own frame is noise to the model.
    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell"):
        tb = tb.tb_next
    sys.stderr.write("".join(traceback.format_exception(type(exc), exc, tb)))


def run_cell(code):
    global cell_count
    cell_count += 1
    name = "<cell-%d>" % cell_count
    linecache.cache[name] = (len(code), None, code.splitlines(True), name)
    try:
        tree = ast.parse(code, name, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, name, "exec"), namespace)
        if last is not None:
            value = eval(compile(last, name, "eval"), namespace)
            if value is not None:
                print(repr(value))
        return True
    except SyntaxError:
        # No user frames to show: the error itself says where.
        sys.stderr.write("".join(traceback.format_exception_only(*sys.exc_info()[:2])))
        return False
    except BaseException as exc:  # SystemExit and KeyboardInterrupt included: the REPL goes on
        print_user_traceback(exc)
        return False


def stub_of(name, fn):
    try:
        sig = str(inspect.signature(fn))
    except (TypeError, ValueError):
        sig = "(...)"
    doc = inspect.getdoc(fn) or ""
    doc = doc.replace('"""', "'''").replace("\n", "\n    ")
    body = '    """%s"""\n' % doc if doc else "    ...\n"
    return "def %s%s:\n%s" % (name, sig, body)


def tool_stubs(before):
    stubs = []
    for name, value in namespace.items():
        if name.startswith("_") or name in before:
            continue
        if inspect.isfunction(value):
            stubs.append(stub_of(name, value))
    return "\n".join(stubs)


def reply(obj):
    results.write(json.dumps(obj) + "\n")
    results.flush()


for line in commands:
    try:
        cmd = json.loads(line)
        op, code = cmd["op"], cmd["code"]
    except (ValueError, KeyError, TypeError):
        reply({"ok": False, "error": "bad command"})
        continue
    set_cpu_budget(cmd.get("cpu_s"))
    before = set(namespace)
    ok = run_cell(code)
    if os.getpid() != DRIVER_PID:
        # A process the code forked got here: only the interpreter itself may answer.
        os._exit(0)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:  # the code may have closed or replaced them
            pass
    answer = {"ok": ok}
    if op == "tools":
        answer["stubs"] = tool_stubs(before)
    reply(answer)
