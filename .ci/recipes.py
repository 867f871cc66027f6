"""Apply every recipe of README.md to a fresh copy of the project, exactly as printed, then
test it, start the server, ask the recipe's URLs and stop it with SIGTERM.

    python3 .ci/recipes.py [NAME...]      # from the project root; .ci/recipes.sh sets PYTHON

A recipe is the fenced code blocks that follow README comments of the form

    <!-- recipe NAME: ACTION [ARGUMENTS] [tests=full] [after=OTHER] -->

ACTION says what to do with the block below the comment:
    in-class CLASS FILE      add it at the end of class CLASS
    before-class CLASS FILE  add it above class CLASS
    replace-class CLASS FILE put it in place of class CLASS
    under SECTION FILE       add it below the line [SECTION] (prod.conf)
    append FILE, create FILE add it at the end of FILE, or write FILE
    run                      run it with bash in the copy
    check expect=TEXT        run it (a curl to http://localhost:8080) against the running server;
                             its output must contain TEXT
tests=full runs ./testing.sh (every test), else ./testing.sh --site. after=OTHER applies
recipe OTHER first. Prints PASS/FAIL per recipe and ends with "N passed, N failed".
"""
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(r'<!-- recipe ([\w-]+): (.*?) -->\n+```[^\n]*\n(.*?)```', re.S)
PYTHON = os.environ.get('PYTHON', sys.executable)


def recipes(readme):
    """{name: {'steps': [(action, args, block)], 'options': {...}}} in README order."""
    found = {}
    for name, command, block in MARKER.findall(readme):
        words = shlex.split(command)
        options = dict(w.split('=', 1) for w in words if '=' in w and w.split('=')[0] in
                       ('tests', 'after', 'expect'))
        positional = [w for w in words if w.split('=')[0] not in ('tests', 'after', 'expect')]
        recipe = found.setdefault(name, {'steps': [], 'options': {}})
        recipe['options'].update({k: v for k, v in options.items() if k != 'expect'})
        recipe['steps'].append((positional[0], positional[1:], block, options.get('expect')))
    return found


def class_span(lines, name):
    """(first, end) line indexes of top-level `class name`, its trailing blank lines excluded."""
    first = next(i for i, line in enumerate(lines) if re.match(rf'class {name}\b', line))
    end = first + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in ' \t'):
        end += 1
    while not lines[end - 1].strip():
        end -= 1
    return first, end


def edit(folder, action, args, block):
    path = os.path.join(folder, args[-1]) if args else None
    if action == 'run':
        subprocess.run(['bash', '-euc', block], cwd=folder, check=True)
        return
    if action == 'create':
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(block)
        return
    with open(path) as f:
        lines = f.read().split('\n')
    new = block.rstrip('\n').split('\n')
    if action == 'append':
        lines = lines[:-1] + [''] + new + [''] if lines[-1] == '' else lines + [''] + new
    elif action == 'under':
        at = lines.index(f'[{args[0]}]') + 1
        lines[at:at] = new
    else:
        first, end = class_span(lines, args[0])
        if action == 'in-class':
            lines[end:end] = [''] + new
        elif action == 'before-class':
            lines[first:first] = new + ['', '']
        elif action == 'replace-class':
            lines[first:end] = new
        else:
            raise ValueError(f'unknown action {action!r}')
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def serve_and_check(folder, checks, log):
    """Start `python run.py`, run the checks, stop it with SIGTERM: a list of problems."""
    port, admin = free_ports(2)
    env = dict(os.environ, HOST='127.0.0.1', PORT=str(port), ADMIN_PORT=str(admin))
    proc = subprocess.Popen([PYTHON, 'run.py'], cwd=folder, env=env, stdout=log, stderr=log)
    problems = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/healthcheck', timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    return [f'the server did not start (status {proc.poll()})']
                time.sleep(0.1)
        for block, expect in checks:
            command = block.replace('localhost:8080', f'127.0.0.1:{port}')
            done = subprocess.run(['bash', '-euc', command], cwd=folder, capture_output=True,
                                  text=True, timeout=30)
            if expect not in done.stdout:
                problems.append(f'{command.strip()!r} printed {done.stdout[:300]!r}, '
                                f'not {expect!r}')
        proc.send_signal(signal.SIGTERM)
        try:
            if proc.wait(timeout=20) != 0:
                problems.append(f'SIGTERM: exit status {proc.returncode}, not 0')
        except subprocess.TimeoutExpired:
            problems.append('SIGTERM: still running after 20 s')
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return problems


# What a client may send to a recipe's URLs beyond the README's own curls: a repeated
# parameter arrives as a list, a JSON body may be any JSON value. Never a 500.
HOSTILE_CHECKS = {
    'handler': [("curl -si 'http://localhost:8080/shop/item?number=1&number=2'", '404 Not Found'),
                ("curl -si 'http://localhost:8080/shop/item/%C2%B2'", '404 Not Found')],
    'json-api': [("curl -si -H 'Content-Type: application/json' -d '[1, 2]' "
                  "http://localhost:8080/api/greet", '422 Unprocessable Entity'),
                 ("curl -si -H 'Content-Type: application/json' -d '\"Ada\"' "
                  "http://localhost:8080/api/greet", '422 Unprocessable Entity')],
    'setting': [("curl -si 'http://localhost:8080/hello?name=a&name=b'", '200 OK')],
}


def try_recipe(name, all_recipes, pristine, work):
    folder = os.path.join(work, name)
    shutil.copytree(pristine, folder, symlinks=True)
    chain, recipe = [], all_recipes[name]
    while recipe['options'].get('after'):  # the recipes this one builds on, oldest first
        chain.insert(0, all_recipes[recipe['options']['after']])
        recipe = chain[0]
    checks = list(HOSTILE_CHECKS.get(name, ()))
    with open(os.path.join(work, f'{name}.log'), 'w') as log:
        try:
            for step in chain + [all_recipes[name]]:
                for action, args, block, expect in step['steps']:
                    if action == 'check':
                        checks.append((block, expect or ''))
                    else:
                        edit(folder, action, args, block)
        except (subprocess.CalledProcessError, ValueError, StopIteration, OSError) as error:
            return [f'could not apply it: {error!r}']
        full = all_recipes[name]['options'].get('tests') == 'full'
        tests = ['./testing.sh'] + ([] if full else ['--site'])
        log.write(f'== {" ".join(tests)}\n')
        log.flush()
        done = subprocess.run(tests, cwd=folder, stdout=log, stderr=log, timeout=400,
                              env=dict(os.environ, PYTHON=PYTHON))
        if done.returncode != 0:
            return [f'{" ".join(tests)} failed (status {done.returncode})']
        log.write('== python run.py\n')
        log.flush()
        return serve_and_check(folder, checks, log)


def main(names):
    with open(os.path.join(ROOT, 'README.md')) as f:
        found = recipes(f.read())
    names = names or list(found)
    passed = failed = 0
    with tempfile.TemporaryDirectory() as work:
        pristine = os.path.join(work, 'project')  # a fresh clone has no .venv, no .git
        shutil.copytree(ROOT, pristine, ignore=shutil.ignore_patterns(
            '.git', '.venv', '__pycache__', '.coverage', '.coverage.*', 'artifacts', 'results'))
        for name in names:
            started = time.monotonic()
            problems = try_recipe(name, found, pristine, work)
            took = f'{time.monotonic() - started:.0f} s'
            if problems:
                failed += 1
                print(f'FAIL: recipe {name} ({took})')
                for problem in problems:
                    print(f'  {problem}')
                with open(os.path.join(work, f'{name}.log')) as log:
                    lines = log.readlines()
                failures = [i for i, line in enumerate(lines) if line.startswith(('FAIL:', 'ERROR:'))]
                print(''.join(sum((lines[i:i + 15] for i in failures[:3]), []) or lines[-30:]))
            else:
                passed += 1
                print(f'PASS: recipe {name} ({took})')
            sys.stdout.flush()
    if not found:
        failed += 1
        print('FAIL: no recipe found in README.md')
    print(f'{passed} passed, {failed} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
