#!/usr/bin/env python3
"""Counts individual test cases after `meson test` and prints `N passed, N failed[, N skipped]`.

Each GoogleTest executable writes tests/results/NAME.xml (see tests/meson.build). A test whose
report is missing (it crashed or timed out before writing one) counts as one failed case, so a
run that executed nothing, or died half-way, is visible. Exit status 1 when any case failed or
none ran.
"""
import json
import os
import sys
import xml.etree.ElementTree as ET

build = sys.argv[1]
passed = failed = skipped = 0
log = os.path.join(build, 'meson-logs', 'testlog.json')
with open(log) as f:
    runs = [json.loads(line) for line in f if line.strip()]
for run in runs:
    name = run['name'].split(' / ')[-1]  # meson 1.0 logs 'project:suite / name'
    report = os.path.join(build, 'tests', 'results', name + '.xml')
    if os.path.exists(report):
        try:
            cases = list(ET.parse(report).getroot().iter('testcase'))
        except ET.ParseError:
            cases = None
        if cases is not None:
            for case in cases:
                if case.find('failure') is not None or case.find('error') is not None:
                    failed += 1
                elif case.get('result') == 'skipped' or case.find('skipped') is not None:
                    skipped += 1
                elif case.get('status', 'run') == 'run':
                    passed += 1
            if run['result'] not in ('OK', 'SKIP', 'EXPECTEDFAIL') and not any(
                    c.find('failure') is not None for c in cases):
                failed += 1  # the process failed (sanitizer report, crash at exit) after its cases passed
            continue
    if run['result'] in ('OK', 'EXPECTEDFAIL'):
        passed += 1
    elif run['result'] == 'SKIP':
        skipped += 1
    else:
        failed += 1
line = f'{passed} passed, {failed} failed'
if skipped:
    line += f', {skipped} skipped'
print(line)
sys.exit(1 if failed or passed == 0 else 0)
