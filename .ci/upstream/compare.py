"""Compare the suites' outcomes on the stock server and on the template's server.

    python compare.py candidates WORK ALLOWLIST     # ids to run again (one a line)
    python compare.py report WORK ALLOWLIST         # summary; exit 1 on a regression

WORK holds, for SUITE in cheroot and cherrypy, the outcome files written by plugin.py:
SUITE-stock.json and SUITE-template.json (the full runs), and SUITE-stock-again.json and
SUITE-template-again.json (the second look at the candidates, if any).

A regression: a test that passed on stock, then failed (or never reported: a crash) with
the template's server, and did so again when both were run a second time, on their own
(cheroot) or with the rest of their test class (CherryPy's tests build on each other).
A test that passed on the second run with the template is reported as flaky, a test that
failed the second time on stock is reported as flaky on stock; neither counts.

ALLOWLIST lines: "<test id> -- <reason>"; a test id ending in "*" covers every id that
starts with what precedes it (parametrized tests). Regressions listed there are reported
with their reason and do not count. Listed ids that did not regress are reported as stale.

The last line printed is "N passed, N failed": N passed counts the tests that pass on stock
and with the template; N failed the regressions that the allowlist does not cover.
"""
import json
import os
import sys

SUITES = ('cheroot', 'cherrypy')
# A test the suite marks expected-to-fail (xfail) is one its authors do not promise: its
# passing on stock is luck of timing, not behaviour to keep (CherryPy's test_antistampede,
# issue 1536, and test_file_stream). Only plain passes count.
PASSING = ('passed',)


def load(work, name):
    path = os.path.join(work, name + '.json')
    if not os.path.isfile(path):
        return None
    with open(path) as results:
        return json.load(results)


def read_allowlist(path):
    entries = []
    if not os.path.isfile(path):
        return entries
    with open(path) as allowlist:
        for number, line in enumerate(allowlist, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            test_id, sep, reason = line.partition(' -- ')
            if not sep or not reason.strip():
                raise SystemExit(f'{path}:{number}: "<test id> -- <reason>" expected: {line}')
            entries.append((test_id.strip(), reason.strip()))
    return entries


def allowed(test_id, entries):
    for pattern, reason in entries:
        if test_id == pattern or (pattern.endswith('*') and test_id.startswith(pattern[:-1])):
            return pattern, reason
    return None


def first_look(work):
    """{suite: (stock, template, [ids passing on stock, not with the template])}"""
    looks = {}
    for suite in SUITES:
        stock, template = load(work, f'{suite}-stock'), load(work, f'{suite}-template')
        if stock is None or template is None:
            raise SystemExit(f'{suite}: no outcomes for the {"stock" if stock is None else "template"}'
                             ' run (did pytest start? see its log in the work folder)')
        candidates = sorted(test for test, outcome in stock.items()
                            if outcome in PASSING and template.get(test) not in PASSING)
        looks[suite] = stock, template, candidates
    return looks


def candidates(work, allowlist_path):
    """Write SUITE-candidates.txt: what to run again. Allowlisted tests are not run again.
    CherryPy's tests are run again by class: its test methods build on each other's state."""
    entries = read_allowlist(allowlist_path)
    for suite, (_, _, ids) in first_look(work).items():
        unlisted = [test for test in ids if not allowed(test, entries)]
        again = unlisted
        if suite == 'cherrypy':
            again = sorted({'::'.join(test.split('::')[:2]) for test in unlisted})
        with open(os.path.join(work, f'{suite}-candidates.txt'), 'w') as out:
            out.writelines(test + '\n' for test in again)
        what = 'test(s)' if suite == 'cheroot' else 'test class(es)'
        print(f'{suite}: {len(ids)} test(s) passed on stock and not with the template server, '
              f'{len(ids) - len(unlisted)} of them allowlisted'
              + (f'; running {len(again)} {what} again on both servers' if again else ''))


def report(work, allowlist_path):
    entries = read_allowlist(allowlist_path)
    used = set()
    total_passed = total_failed = 0
    for suite, (stock, template, ids) in first_look(work).items():
        stock_again = load(work, f'{suite}-stock-again')
        template_again = load(work, f'{suite}-template-again')
        unlisted = [test for test in ids if not allowed(test, entries)]
        if unlisted and (stock_again is None or template_again is None):
            raise SystemExit(f'{suite}: the candidates were not run again (see *-again.log)')
        stock_again, template_again = stock_again or {}, template_again or {}
        stock_passed = [test for test, outcome in stock.items() if outcome in PASSING]
        regressions, allowlisted, flaky, stock_flaky = [], [], [], []
        for test in ids:
            entry = allowed(test, entries)
            if entry:
                used.add(entry[0])
                allowlisted.append((test, entry[1]))
            elif stock_again.get(test) not in PASSING:
                stock_flaky.append(test)
            elif template_again.get(test) in PASSING:
                flaky.append(test)
            else:
                regressions.append(test)
        both = len(stock_passed) - len(ids)
        print(f'\n== {suite}: {len(stock_passed)} passed on stock; with the template server '
              f'{both} passed, {len(regressions)} regressed, {len(allowlisted)} allowlisted, '
              f'{len(flaky) + len(stock_flaky)} flaky')
        for test in regressions:
            print(f'  REGRESSION  {test}  (template: {template.get(test, "not reported")}, '
                  f'again: {template_again.get(test, "not reported")})')
        for test, reason in allowlisted:
            print(f'  allowlisted {test}: {reason}')
        for test in flaky:
            print(f'  flaky       {test}: failed with the template server once, passed again')
        for test in stock_flaky:
            print(f'  stock-flaky {test}: failed on stock when run again; not counted')
        total_passed += both
        total_failed += len(regressions)
    stale = [pattern for pattern, _ in entries if pattern not in used]
    if stale:
        print('\nallowlist entries with nothing to cover (fixed, or renamed?):')
        for pattern in stale:
            print(f'  {pattern}')
    print(f'\n{total_passed} passed, {total_failed} failed')
    return 1 if total_failed else 0


def main(argv):
    command, work, allowlist = argv[1:4]
    if command == 'candidates':
        candidates(work, allowlist)
        return 0
    return report(work, allowlist)


if __name__ == '__main__':
    sys.exit(main(sys.argv))
