#!/usr/bin/env python3
"""Tests of scripts/module-cycles.py: it runs on tiny source trees written to a temp dir,
as CI runs it, and must fail on every kind of cycle and pass on clean trees and on ours.

    python3 scripts/test_module_cycles.py        (run by .ci/run)
"""

import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKER = os.path.join(ROOT, "scripts", "module-cycles.py")


def check(files, cwd=None):
    """Writes `files` (path -> Rust source) as a crate's src/ and runs the checker on it.
    Returns (exit status, output)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        for path, text in files.items():
            full = os.path.join(src, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w", encoding="utf-8") as f:
                f.write(text)
        args = [sys.executable, CHECKER] + ([] if cwd else [src])
        run = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
        return run.returncode, run.stdout + run.stderr


# `a` uses `b` from a nested file, and `b` uses only its own child.
CLEAN = {
    "lib.rs": "pub mod a;\npub mod b;\n",
    "a/mod.rs": "mod x;\npub struct A;\n",
    "a/x.rs": "use super::A;\nuse crate::b::{self, B};\npub fn f(_: A, _: B) { b::g() }\n",
    "b/mod.rs": "mod y;\npub use y::B;\npub fn g() {}\n",
    "b/y.rs": "use super::g;\npub struct B;\n",
}


class ModuleCycles(unittest.TestCase):
    def test_a_clean_tree_passes(self):
        code, out = check(CLEAN)
        self.assertEqual(code, 0, out)
        self.assertIn("5 modules, no import cycle", out)

    def test_a_cycle_between_top_level_modules_fails(self):
        # No two files use each other: a::x -> b and b -> a. The old check, which only
        # looked at files, let this through (as it did config <-> logging).
        tree = dict(CLEAN, **{"b/mod.rs": "mod y;\npub use y::B;\npub fn g(_: crate::a::A) {}\n"})
        code, out = check(tree)
        self.assertEqual(code, 1, out)
        self.assertIn("CYCLE in", out)
        self.assertIn("  a -> b (a::x uses b)", out)
        self.assertIn("  b -> a (b uses a)", out)

    def test_a_longer_top_level_cycle_fails(self):
        tree = {
            "lib.rs": "mod a;\nmod b;\nmod c;\n",
            "a.rs": "use crate::b::B;\npub struct A;\n",
            "b/mod.rs": "mod deep;\npub struct B;\n",
            "b/deep.rs": "use crate::c::C;\n",
            "c.rs": "pub struct C(crate::a::A);\n",
        }
        code, out = check(tree)
        self.assertEqual(code, 1, out)
        self.assertIn(": a, b, c\n", out)
        self.assertIn("  b -> c (b::deep uses c)", out)

    def test_a_cycle_between_nested_siblings_fails(self):
        # Inside `api`: api::routes::token -> api::sign, api::sign -> api::routes.
        tree = {
            "lib.rs": "mod api;\n",
            "api/mod.rs": "mod routes;\nmod sign;\n",
            "api/routes/mod.rs": "mod token;\npub struct Route;\n",
            "api/routes/token.rs": "use crate::api::sign::Sign;\n",
            "api/sign.rs": "use super::routes::Route;\npub struct Sign;\n",
        }
        code, out = check(tree)
        self.assertEqual(code, 1, out)
        self.assertIn("  api::routes -> api::sign (api::routes::token uses api::sign)", out)
        self.assertIn("  api::sign -> api::routes (api::sign uses api::routes)", out)

    def test_a_cycle_between_two_files_is_reported_once(self):
        tree = {
            "lib.rs": "mod a;\nmod b;\n",
            "a.rs": "use crate::b::B;\npub struct A;\n",
            "b.rs": "use crate::a::A;\npub struct B;\n",
        }
        code, out = check(tree)
        self.assertEqual(code, 1, out)
        self.assertEqual(out.count("CYCLE"), 1, out)

    def test_parents_children_tests_and_comments_do_not_count(self):
        tree = dict(
            CLEAN,
            **{
                # A child using its parent and the parent its child is nesting, not a cycle.
                "b/y.rs": "use super::g;\npub struct B;\n",
                "b/mod.rs": "mod y;\npub use y::B;\npub fn g() { let _ = self::y::B; }\n"
                "// crate::a::A in a comment\n"
                "#[cfg(test)]\nmod tests { use crate::a::A; }\n",
            },
        )
        code, out = check(tree)
        self.assertEqual(code, 0, out)

    def test_the_workspace_passes(self):
        code, out = check({}, cwd=ROOT)
        self.assertEqual(code, 0, out)
        self.assertIn("ok: src:", out)


if __name__ == "__main__":
    unittest.main()
