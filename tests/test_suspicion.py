"""F18-F20 rules (issue #16): indirect-probe verdicts and the panic threshold, pure."""

from __future__ import annotations

import pytest

from controlplane.core.model import InvalidInput
from controlplane.core.suspicion import (
    DOWN,
    LINK_CUT,
    UNDECIDED,
    SuspicionSettings,
    choose_probers,
    panicking,
    verdict,
)

S = SuspicionSettings()


def test_no_peer_reaches_it_is_down() -> None:  # F18
    ans = {"a": (False, 10.3), "b": (False, 10.4), "c": (False, 10.5)}
    assert verdict(ans, 3, 10.0, 10.5, S) == DOWN


def test_a_peer_reaching_it_is_a_cut_link() -> None:  # F19
    ans = {"a": (False, 10.3), "b": (True, 10.4), "c": (False, 10.5)}
    assert verdict(ans, 3, 10.0, 10.5, S) == LINK_CUT


def test_missing_answers_leave_it_undecided() -> None:
    assert verdict({"a": (False, 10.3)}, 3, 10.0, 10.5, S) == UNDECIDED


def test_answers_from_before_the_silence_do_not_count() -> None:
    ans = {"a": (True, 9.0), "b": (False, 10.4)}
    assert verdict(ans, 2, 10.0, 10.5, S) == UNDECIDED


def test_an_old_reachable_answer_expires() -> None:
    ans = {"a": (True, 10.1)}
    assert verdict(ans, 1, 10.0, 10.1 + S.reachable_hold_s + 0.1, S) == UNDECIDED


def test_probers_exclude_the_target_and_are_at_most_k() -> None:
    got = choose_probers("x", ["a", "b", "x", "c", "d"], 3)
    assert len(got) == 3 and "x" not in got and len(set(got)) == 3
    assert choose_probers("x", ["x"], 3) == []


def test_panic_above_the_share() -> None:  # F20: 5 of 9 silent
    assert panicking(5, 9, S) and not panicking(4, 9, S)


@pytest.mark.parametrize(("field", "value"), [("probe_k", 0), ("panic_share", 1.0),
                                              ("probe_timeout_s", float("nan"))])
def test_bad_settings_name_field_and_value(field: str, value: object) -> None:
    with pytest.raises(InvalidInput) as e:
        SuspicionSettings(**{field: value})
    assert e.value.field == field
