"""Evidence exports through the CLI: CSV, JSON Lines and an OSCAL 1.2.1 assessment-results
document (validated against NIST's schema in ../shared/oscal), a signed manifest that
`gatehouse audit verify-export` checks, and no vaulted secret anywhere in them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jsonschema
import regex

from harness import CANARY

REPO = Path(__file__).resolve().parents[2]
OSCAL = REPO.parent / "shared" / "oscal"
CATALOG = OSCAL / "NIST_SP-800-53_rev5_catalog.json"
MARKER = "export_marker_q81"


def _oscal_validator(schema: dict):
    """Draft-07 with the schema's patterns run by the `regex` module: NIST's patterns use
    Unicode classes (\\p{L}) that Python's `re` lacks. Formats are checked too."""

    def pattern(validator, patrn, instance, schema):
        if validator.is_type(instance, "string") and not regex.search(patrn, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {patrn!r}")

    cls = jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": pattern})
    return cls(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def test_oscal_validator_rejects_what_the_schema_forbids():
    """The validator itself must be able to fail (a bad UUID, a missing required field)."""
    schema = json.loads((OSCAL / "oscal_assessment-results_schema.json").read_text())
    v = _oscal_validator(schema)
    assert list(v.iter_errors({"assessment-results": {"uuid": "not-a-uuid"}}))
    token_pattern = schema["definitions"]["TokenDatatype"]["pattern"]
    assert regex.search(token_pattern, "control_id") and not regex.search(token_pattern, "9 bad")


def test_export_validates_and_verifies(gatehouse, tmp_path):
    gw = gatehouse()
    token = gw.token("exporter", groups=["analysts"])
    gw.psql("exporter", token, "-At", "-c", f"select '{MARKER}'", "-c", "select 1/0")
    bad = gw.psql("someone", "not-a-token", "-At", "-c", "select 1")
    assert bad.returncode != 0
    assert gw.stop() == 0

    out = tmp_path / "export"
    p = gw.cli("audit", "export", "--out", str(out), "--catalog", str(CATALOG), timeout=120)
    assert "store verification passed" in p.stdout, p.stdout
    names = sorted(f.name for f in out.iterdir())
    assert names == ["assessment-results.json", "manifest.json", "manifest.sig", "records.csv", "records.jsonl"]

    # OSCAL: valid against the NIST schema, control titles from the catalog.
    schema = json.loads((OSCAL / "oscal_assessment-results_schema.json").read_text())
    doc = json.loads((out / "assessment-results.json").read_text())
    errors = sorted(_oscal_validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    text = json.dumps(doc)
    catalog_titles = {}
    for group in json.loads(CATALOG.read_text())["catalog"]["groups"]:
        for c in group.get("controls", []):
            catalog_titles[c["id"]] = c["title"]
    assert catalog_titles["au-2"] in text and catalog_titles["ac-3"] in text
    props = {p["name"]: p["value"] for p in doc["assessment-results"]["metadata"]["props"]}
    assert props["key-store"] == "software (development only)"

    # JSON Lines and CSV: the statements with their identity and controls.
    recs = [json.loads(l) for l in (out / "records.jsonl").read_text().splitlines()]
    mine = [r for r in recs if MARKER in (r.get("statement") or "")]
    assert len(mine) == 1 and mine[0]["username"] == "exporter" and "AU-3" in " ".join(mine[0]["controls"]).upper()
    assert any(r["event"] == "login.failure" for r in recs)
    rows = list(csv.reader((out / "records.csv").open(newline="")))
    assert rows[0][:3] == ["seq", "time", "event"] and len(rows) == len(recs) + 1

    # The signed manifest verifies; a changed file is named.
    p = gw.cli("audit", "verify-export", str(out))
    assert p.stdout.strip().endswith("OK"), p.stdout
    with (out / "records.csv").open("a") as f:
        f.write("1,forged\n")
    p = gw.cli("audit", "verify-export", str(out), check=False)
    assert p.returncode == 1 and "FileChanged" in p.stdout and "records.csv" in p.stdout, p.stdout

    # No vaulted secret anywhere in the evidence.
    for f in out.iterdir():
        assert CANARY.encode() not in f.read_bytes(), f

    # A range that excludes everything exports nothing but still verifies.
    empty = tmp_path / "empty"
    p = gw.cli("audit", "export", "--from", "2000-01-01", "--to", "2000-01-02", "--out", str(empty),
               "--catalog", str(CATALOG), timeout=120)
    assert "exported 0 records" in p.stdout, p.stdout
    assert gw.cli("audit", "verify-export", str(empty)).stdout.strip().endswith("OK")
