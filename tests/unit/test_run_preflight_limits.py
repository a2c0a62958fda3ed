"""fab run's preflight reads the open-file limit Ansible's tuning role reported, not a second guess."""

from __future__ import annotations

from kit.run._hostops import open_file_limit


def test_the_tuning_report_is_the_authority_where_the_host_was_deployed():
    # under systemd a service may get more than the SSH login's hard limit: the report knows
    facts = {"nofile_hard": 20000,
             "tuning": {"nofile": {"wanted": 65536, "cap": 1048576, "effective": 65536, "proxy_sessions_max": 32668}}}
    assert open_file_limit(facts) == (65536, 32668, "kit_root/state/tuning.json (Ansible's tuning role)")


def test_without_a_report_the_ssh_hard_limit_is_used_and_says_so():
    nofile, sessions, source = open_file_limit({"nofile_hard": 20000, "tuning": None})
    assert (nofile, sessions) == (20000, None) and "no tuning report" in source
    assert open_file_limit({"nofile_hard": 20000, "tuning": {"nofile": {"effective": "x"}}})[0] == 20000
