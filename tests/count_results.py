#!/usr/bin/env python3
"""Counts individual test cases after `meson test` and prints `N passed, N failed, N skipped`.

    count_results.py BUILD_DIR [plain|asan|tsan]

Each GoogleTest executable writes tests/results/NAME.xml (see tests/meson.build). A test whose
report is missing (it crashed or timed out before writing one) counts as one failed case, and
so does an expected test that did not run at all (EXPECTED below, the one list of them), so a
run that executed nothing, lost a suite, or died half-way is visible. Skipped cases are named
with their reason. Exit status 1 when any case failed or none ran.
"""
import json
import os
import sys
import xml.etree.ElementTree as ET

# Every test the suite registers, and the build modes that run it: the TSan build runs the
# cross-thread suite only; `embed` links the README example without a sanitizer runtime.
ALL = ('plain', 'asan', 'tsan')
SANITIZERS_OFF = ('plain',)
NO_TSAN = ('plain', 'asan')
TSAN_ONLY = ('tsan',)
EXPECTED = {
    'function': NO_TSAN, 'address': NO_TSAN, 'buffer': NO_TSAN, 'socket': NO_TSAN,
    'timer_queue': NO_TSAN, 'event_loop': NO_TSAN, 'threads': ALL, 'listener': NO_TSAN,
    'connection': NO_TSAN, 'connector': NO_TSAN, 'tcp_server': NO_TSAN, 'short_sends': NO_TSAN,
    'http_parser': NO_TSAN, 'resp_parser': NO_TSAN, 'histogram': NO_TSAN, 'demo': NO_TSAN,
    'http_server': NO_TSAN, 'kv_server': NO_TSAN, 'bad_input': NO_TSAN, 'soak': NO_TSAN,
    'faults': NO_TSAN, 'embed': SANITIZERS_OFF, 'tcp_proxy': NO_TSAN, 'udp_echo': NO_TSAN,
    'datagram_socket': NO_TSAN,
    'resolver': NO_TSAN,  # built with -Dresolver=enabled, as build.sh configures every test build
    # The multi-threaded cases of other executables, picked by name into the TSan run
    # (tests/meson.build): the signal tests' second thread, two-loop servers, --threads demos.
    'event_loop_threads': TSAN_ONLY, 'tcp_server_threads': TSAN_ONLY, 'demo_threads': TSAN_ONLY,
    'http_server_threads': TSAN_ONLY, 'kv_server_threads': TSAN_ONLY,
    'tcp_proxy_threads': TSAN_ONLY, 'udp_echo_threads': TSAN_ONLY,
}
NO_REPORT = {'embed'}  # a shell script, not a GoogleTest executable: its exit status counts

build = sys.argv[1]
mode = sys.argv[2] if len(sys.argv) > 2 else 'plain'
passed = failed = skipped = 0
problems = []
skipped_cases = []

log = os.path.join(build, 'meson-logs', 'testlog.json')
runs = []
if os.path.exists(log):
    with open(log) as f:
        runs = [json.loads(line) for line in f if line.strip()]
ran = set()
for run in runs:
    name = run['name'].split(' / ')[-1]  # meson 1.0 logs 'project:suite / name'
    ran.add(name)
    if name in NO_REPORT:
        if run['result'] in ('OK', 'EXPECTEDFAIL'):
            passed += 1
        elif run['result'] == 'SKIP':
            skipped += 1
            skipped_cases.append(('skipped by meson', name))
        else:
            failed += 1
        continue
    report = os.path.join(build, 'tests', 'results', name + '.xml')
    cases = None
    if os.path.exists(report):
        try:
            cases = list(ET.parse(report).getroot().iter('testcase'))
        except ET.ParseError:
            cases = None
    if cases is None:
        failed += 1
        problems.append(f'{name}: no readable report ({run["result"]})')
        continue
    if not cases:
        failed += 1  # a filter that matches nothing, or an executable with no tests
        problems.append(f'{name}: its report lists no test case')
        continue
    for case in cases:
        if case.find('failure') is not None or case.find('error') is not None:
            failed += 1
        elif case.get('result') == 'skipped' or case.find('skipped') is not None:
            skipped += 1
            why = case.find('skipped')
            message = (why.get('message') or '').strip() if why is not None else ''
            skipped_cases.append((message.splitlines()[-1] if message else 'no reason given',
                                  f'{case.get("classname")}.{case.get("name")}'))
        elif case.get('status', 'run') == 'run':
            passed += 1
    if run['result'] not in ('OK', 'SKIP', 'EXPECTEDFAIL') and not any(
            c.find('failure') is not None for c in cases):
        failed += 1  # the process failed (sanitizer report, crash at exit) after its cases passed
        problems.append(f'{name}: exited {run["result"]} after its cases passed')

for name, modes in EXPECTED.items():
    if mode in modes and name not in ran:
        failed += 1
        problems.append(f'{name}: expected in a {mode} run, did not run')
for name in sorted(ran - EXPECTED.keys()):
    problems.append(f'{name}: ran but is not in count_results.py EXPECTED (add it)')
    failed += 1

# Grouped by reason: one line each, naming the cases.
reasons = {}
for reason, case in skipped_cases:
    reasons.setdefault(reason, []).append(case)
for reason, cases in reasons.items():
    shown = ', '.join(cases[:3]) + (f' and {len(cases) - 3} more' if len(cases) > 3 else '')
    print(f'skipped {len(cases)}: {reason} ({shown})')
for line in problems:
    print(f'problem: {line}')
print(f'{passed} passed, {failed} failed, {skipped} skipped')
sys.exit(1 if failed or passed == 0 else 0)
