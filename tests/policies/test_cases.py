"""Policy decision cases: every case of every bundle under policies/ holds against its bundle's
rules, malformed case files fail with errors naming file and key, a wrong case is reported with
what went wrong, and `layer-router check` runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import router
from router.errors import ConfigError
from router.policy.bundle import load_bundle
from router.policy.cases import LoadedCase, load_cases, run_case, run_cases
from router.privacy import Privacy

ROOT = Path(router.__file__).resolve().parents[1]
POLICIES = ROOT / "policies"
CLI_TIMEOUT_S = 60.0


def _all_cases() -> list[tuple[Path, LoadedCase]]:
    found = []
    for folder in sorted(p for p in POLICIES.iterdir() if (p / "manifest.yaml").is_file()):
        found += [(folder, case) for case in load_cases(load_bundle(folder))]
    return found


ALL_CASES = _all_cases()


@cache
def _privacy(folder: Path) -> Privacy:
    return Privacy.build(load_bundle(folder), None)


@pytest.mark.parametrize(
    ("folder", "loaded"), ALL_CASES, ids=[f"{f.name}/{c.name}" for f, c in ALL_CASES]
)
def test_bundle_case_holds(folder: Path, loaded: LoadedCase) -> None:
    """The bundle's rules, detectors and redaction give what the case expects."""
    result = run_case(loaded, _privacy(folder))
    assert result.ok, "\n".join(result.problems)


def test_default_bundle_has_meaningful_cases() -> None:
    """The default bundle ships enough cases to pin down its rules."""
    cases = [c for f, c in ALL_CASES if f.name == "default"]
    assert len(cases) >= 15
    expects = [c.case.expect for c in cases]
    assert sum(bool(e.permits) for e in expects) >= 10
    assert sum(bool(e.redaction) for e in expects) >= 5


# -- helpers for bundles made by the tests -------------------------------------------------


def bundle_with(tmp_path: Path, cases: dict[str, str], **files: str) -> Path:
    """A copy of the default bundle with these case files (and any bundle file replaced)."""
    folder = tmp_path / "bundle"
    shutil.copytree(POLICIES / "default", folder)
    shutil.rmtree(folder / "cases")
    (folder / "cases").mkdir()
    for name, text in cases.items():
        (folder / "cases" / name).write_text(text, encoding="utf-8")
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    return folder


def load_error(folder: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_cases(load_bundle(folder))
    return info.value


GOOD = """
cases:
  - name: ok
    request: {text: ["jane@example.com"]}
    origin: EU
    expect: {data_class: personal}
"""


class TestMalformedCaseFiles:
    def test_yaml_syntax_error_names_file_and_line(self, tmp_path: Path) -> None:
        """A YAML syntax error names the file, line and column."""
        folder = bundle_with(tmp_path, {"bad.yaml": "cases:\n  - name: x\n   bad: [\n"})
        error = load_error(folder)
        assert error.source == str(folder / "cases" / "bad.yaml")
        assert "line 3" in str(error)

    def test_unknown_key_named(self, tmp_path: Path) -> None:
        """A misspelt key is an error naming its dotted path."""
        text = GOOD.replace("data_class: personal", "data_clas: personal")
        error = load_error(bundle_with(tmp_path, {"a.yaml": text}))
        assert "cases.0.expect.data_clas: unknown key" in error.problems

    def test_top_level_must_be_a_mapping(self, tmp_path: Path) -> None:
        """A bare list of cases is refused with a clear message."""
        error = load_error(bundle_with(tmp_path, {"a.yaml": "- name: x\n"}))
        assert "expected a mapping at the top level" in str(error)

    def test_no_cases(self, tmp_path: Path) -> None:
        """A file with an empty list of cases says so."""
        error = load_error(bundle_with(tmp_path, {"a.yaml": "cases: []\n"}))
        assert any(p.startswith("cases:") for p in error.problems), error.problems

    def test_case_expecting_nothing(self, tmp_path: Path) -> None:
        """A case without any expectation would always pass: it is refused."""
        text = "cases:\n  - {name: empty, request: {text: [hi]}, expect: {}}\n"
        error = load_error(bundle_with(tmp_path, {"a.yaml": text}))
        assert any("must expect something" in p for p in error.problems), error.problems

    def test_unknown_names_are_each_reported(self, tmp_path: Path) -> None:
        """Unknown classes, entities and tiers are reported with the key that holds them."""
        text = """
cases:
  - name: wrong
    request: {declared: top-secret, x_data_class: nope, entities: [PASSPORT]}
    expect:
      data_class: confidential
      entities: [EMAIL, SHOE_SIZE]
      permits: [{tier: planet, jurisdictions: [EU], allow: true}]
      redaction: {orbit: {absent: [x]}, central: {counts: {FOO: 1}}}
"""
        problems = load_error(bundle_with(tmp_path, {"a.yaml": text})).problems
        for expected in (
            "cases.0.request.declared: unknown data class 'top-secret'",
            "cases.0.request.x_data_class: unknown data class 'nope'",
            "cases.0.expect.data_class: unknown data class 'confidential'",
            "cases.0.request.entities: unknown entity 'PASSPORT'",
            "cases.0.expect.entities: unknown entity 'SHOE_SIZE'",
            "cases.0.expect.redaction.central.counts: unknown entity 'FOO'",
            "cases.0.expect.permits.0.tier: unknown tier 'planet'",
            "cases.0.expect.redaction.orbit: unknown tier 'orbit'",
        ):
            assert any(p.startswith(expected) for p in problems), (expected, problems)

    def test_duplicate_names_across_files(self, tmp_path: Path) -> None:
        """Two cases with one name (even in different files) are an error naming both files."""
        folder = bundle_with(tmp_path, {"a.yaml": GOOD, "b.yaml": GOOD})
        error = load_error(folder)
        assert error.source == str(folder / "cases" / "b.yaml")
        assert str(folder / "cases" / "a.yaml") in error.problems[0]

    def test_yaml_date_in_body_refused(self, tmp_path: Path) -> None:
        """An unquoted date in a body is a YAML date, not JSON: the key that holds it is named."""
        text = GOOD.replace('{text: ["jane@example.com"]}', "{body: {p: {dob: 1990-03-04}}}")
        problems = load_error(bundle_with(tmp_path, {"a.yaml": text})).problems
        assert any(p.startswith("cases.0.request.body.p.dob: not a JSON value") for p in problems)

    def test_wrong_type_named(self, tmp_path: Path) -> None:
        """`allow` must be a boolean: the error says where."""
        text = GOOD.replace(
            "expect: {data_class: personal}",
            "expect: {permits: [{tier: central, allow: maybe}]}",
        )
        problems = load_error(bundle_with(tmp_path, {"a.yaml": text})).problems
        assert any(p.startswith("cases.0.expect.permits.0.allow:") for p in problems), problems

    def test_no_cases_folder_is_fine(self, tmp_path: Path) -> None:
        """A bundle without a cases folder simply has none."""
        folder = bundle_with(tmp_path, {})
        (folder / "cases").rmdir()
        assert run_cases(load_bundle(folder)) == []


class TestFailingCases:
    def test_wrong_expectations_reported(self, tmp_path: Path) -> None:
        """A case whose expectations the rules contradict fails, saying what differs."""
        text = """
cases:
  - name: wrong-on-every-count
    request: {text: ["write to jane@example.com"]}
    origin: EU
    expect:
      data_class: internal
      entities: [PHONE]
      permits:
        - {tier: central, jurisdictions: [US], allow: true}
        - {tier: central, jurisdictions: [EU], allow: true}
      redaction:
        central:
          absent: ["<EMAIL_1>"]
          present: [jane@example.com]
          counts: {EMAIL: 2}
"""
        [result] = run_cases(load_bundle(bundle_with(tmp_path, {"a.yaml": text})))
        assert not result.ok
        assert result.problems == (
            "data class is personal, expected internal",
            "entities are [EMAIL], expected [PHONE]",
            "central in [US] is denied, expected the opposite",
            "central: '<EMAIL_1>' is still there",
            "central: 'jane@example.com' is missing",
            "central: redactions are {EMAIL=1}, expected {EMAIL=2}",
        )

    def test_detection_failure_is_a_problem(self, tmp_path: Path) -> None:
        """A body over the bundle's detection cap cannot be scanned: the case says so."""
        detection = (POLICIES / "default" / "detection.yaml").read_text(encoding="utf-8")
        detection = detection.replace("max_body_bytes: 4194304", "max_body_bytes: 16")
        text = GOOD.replace('"jane@example.com"', '"a long text for a tiny cap: jane@example.com"')
        folder = bundle_with(tmp_path, {"a.yaml": text}, detection=detection)
        [result] = run_cases(load_bundle(folder))
        assert not result.ok
        assert result.problems[0].startswith("detection failed")


class TestCustomPatterns:
    def test_custom_pattern_classifies_and_redacts(self, tmp_path: Path) -> None:
        """A bundle's own pattern is detected, implies its class and is redacted by tier."""
        detection = (POLICIES / "default" / "detection.yaml").read_text(encoding="utf-8")
        detection = detection.replace(
            "custom: []",
            'custom:\n  - {name: EMPLOYEE_ID, pattern: "EMP-[0-9]{6}", data_class: personal}',
        )
        text = """
cases:
  - name: employee-id-is-personal
    request: {text: ["badge EMP-123456 left at gate 4"]}
    origin: EU
    expect:
      data_class: personal
      entities: [EMPLOYEE_ID]
      permits:
        - {tier: central, jurisdictions: [EU], allow: true}
        - {tier: central, jurisdictions: [US], allow: false}
      redaction:
        central: {absent: [EMP-123456], present: ["<EMPLOYEE_ID_1>"], counts: {EMPLOYEE_ID: 1}}
        regional: {absent: [EMP-123456], present: ["<EMPLOYEE_ID#"]}
  - name: lookalike-is-not-an-employee-id
    request: {text: ["badge EMP-12345 left at gate 4"]}
    origin: EU
    expect: {data_class: internal, entities: []}
"""
        folder = bundle_with(tmp_path, {"custom.yaml": text}, detection=detection)
        results = run_cases(load_bundle(folder))
        assert [r.problems for r in results] == [(), ()]
        assert all(r.ok for r in results)

    def test_custom_entity_unknown_without_its_pattern(self, tmp_path: Path) -> None:
        """A case naming a custom entity the bundle does not define is refused."""
        text = (
            "cases:\n"
            "  - {name: x, request: {entities: [EMPLOYEE_ID]}, expect: {data_class: personal}}\n"
        )
        problems = load_error(bundle_with(tmp_path, {"a.yaml": text})).problems
        assert problems == ["cases.0.request.entities: unknown entity 'EMPLOYEE_ID'"]

    def test_a_case_may_ask_as_a_tenant(self, tmp_path: Path) -> None:
        """`request.tenant` starts the request at that tenant's class; an unknown tenant is
        refused like any unknown name."""
        tenants = "default: {data_class: internal}\ntenants:\n  lab: {data_class: sensitive}\n"
        text = """
cases:
  - name: lab-starts-sensitive
    request: {tenant: lab, text: ["shift report"]}
    expect: {data_class: sensitive}
  - name: others-start-internal
    request: {text: ["shift report"]}
    expect: {data_class: internal}
"""
        folder = bundle_with(tmp_path, {"t.yaml": text}, tenants=tenants)
        assert [r.problems for r in run_cases(load_bundle(folder))] == [(), ()]
        unknown = (
            "cases:\n  - {name: x, request: {tenant: nobody}, expect: {data_class: internal}}\n"
        )
        other = bundle_with(tmp_path / "other", {"a.yaml": unknown}, tenants=tenants)
        assert load_error(other).problems == ["cases.0.request.tenant: unknown tenant 'nobody'"]


# -- layer-router check --------------------------------------------------------------------


def run_check(tmp_path: Path, bundle: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m router check` on an empty model repository (the models are not the point)."""
    repository = tmp_path / "models"
    repository.mkdir(exist_ok=True)
    config = tmp_path / "site.yaml"
    policy = f"policy:\n  bundle: {bundle}\n" if bundle else ""
    config.write_text(f"models:\n  repository: {repository}\n{policy}", encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "router", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
        check=False,
    )


class TestCheckCommand:
    def test_default_bundle_cases_pass(self, tmp_path: Path) -> None:
        """`layer-router check` runs the default bundle's cases and reports how many passed."""
        done = run_check(tmp_path)
        count = len([c for f, c in ALL_CASES if f.name == "default"])
        assert done.returncode == 0, done.stderr
        assert f"{count} policy cases passed" in done.stdout

    def test_failing_case_exits_1(self, tmp_path: Path) -> None:
        """A case the rules contradict fails the check (1), named with what went wrong."""
        text = GOOD.replace("data_class: personal", "data_class: public")
        folder = bundle_with(
            tmp_path, {"a.yaml": GOOD.replace("name: ok", "name: fine"), "b.yaml": text}
        )
        done = run_check(tmp_path, folder)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "policy case 'ok' failed" in done.stderr
        assert "data class is personal, expected public" in done.stderr
        assert "1 of 2 policy cases failed" in done.stderr
        assert "fine" not in done.stderr

    def test_malformed_case_exits_2(self, tmp_path: Path) -> None:
        """A malformed case file is a configuration error (2) naming file and key."""
        text = GOOD.replace("origin: EU", "origin: EU\n    colour: blue")
        folder = bundle_with(tmp_path, {"a.yaml": text})
        done = run_check(tmp_path, folder)
        assert done.returncode == 2, done.stdout + done.stderr
        assert str(folder / "cases" / "a.yaml") in done.stderr
        assert "cases.0.colour: unknown key" in done.stderr


def test_cases_can_name_endpoint_hosts(tmp_path: Path) -> None:
    """A permit expectation names the destination's endpoint hosts, which rules may restrict."""
    residency = (POLICIES / "default" / "residency.yaml").read_text(encoding="utf-8")
    residency = residency.replace(
        "  - data_class: personal\n", "  - data_class: personal\n    endpoints: ['*.eu.example']\n"
    )
    case = """
cases:
  - name: personal-stays-on-eu-hosts
    request: {text: ["jane@example.com"]}
    origin: EU
    expect:
      permits:
        - {tier: central, jurisdictions: [EU], endpoints: [llm.eu.example], allow: true}
        - {tier: central, jurisdictions: [EU], endpoints: [llm.us.example], allow: false}
"""
    folder = bundle_with(tmp_path, {"hosts.yaml": case}, residency=residency)
    [result] = run_cases(load_bundle(folder))
    assert result.ok, result.problems
    wrong = case.replace("llm.us.example], allow: false", "llm.us.example], allow: true")
    [result] = run_cases(
        load_bundle(bundle_with(tmp_path / "w", {"h.yaml": wrong}, residency=residency))
    )
    assert result.problems == (
        "central in [EU] on [llm.us.example] is denied, expected the opposite",
    )
