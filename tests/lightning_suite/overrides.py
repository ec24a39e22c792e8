"""Declared differences: suite tests whose distengine failure is a documented choice.

Each entry is (test-id pattern (fnmatch), class, reason). The class replaces the automatic one
(classify.py); the reason is printed in the table and stored in expected.json. Keep the reason
to one line that says what distengine does instead and why.
"""
OVERRIDES: list[tuple[str, str, str]] = [
]
