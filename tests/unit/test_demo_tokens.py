"""The demo's token file (credit_service/demo.py): the inference service never holds mint, the operator's
admin token does, and a file an older `make run` wrote is upgraded in place with its tokens kept."""

from __future__ import annotations

from credit_service.auth import Role, parse_tokens
from credit_service.demo import ensure_tokens


def roles_of(path) -> dict[str, frozenset[Role]]:
    return {caller.name: caller.roles for caller in parse_tokens(path.read_text()).values()}


def test_a_new_token_file_gives_mint_to_the_operator_only(tmp_path):
    path = tmp_path / "auth_tokens"
    tokens = ensure_tokens(path)
    assert set(tokens) == {"inference", "admin"}
    roles = roles_of(path)
    assert roles["inference"] == {Role.SPEND, Role.READ, Role.ADMIN, Role.PAYMENTS}
    assert roles["admin"] == {Role.ADMIN, Role.READ, Role.MINT}
    assert ensure_tokens(path) == tokens  # a second start changes nothing


def test_an_older_token_file_is_upgraded_in_place_keeping_its_tokens(tmp_path):
    path = tmp_path / "auth_tokens"
    inference, admin = "i" * 43, "a" * 43
    for old in (f"inference:{inference}:spend+read\nadmin:{admin}:admin+read\n",
                f"# comment\ninference:{inference}:spend+read+admin\nadmin:{admin}:admin+read\n",
                f"inference:{inference}:spend+read+admin+mint\nadmin:{admin}:admin\nother:{'o' * 20}:spend\n"):
        path.write_text(old)
        assert ensure_tokens(path) == {"inference": inference, "admin": admin,
                                       **({"other": "o" * 20} if "other" in old else {})}
        roles = roles_of(path)
        assert Role.MINT not in roles["inference"], old
        assert roles["inference"] == {Role.SPEND, Role.READ, Role.ADMIN, Role.PAYMENTS}
        assert roles["admin"] == {Role.ADMIN, Role.READ, Role.MINT}
        if "other" in old:
            assert roles["other"] == {Role.SPEND}  # not a demo caller: left alone
        assert ("# comment" in path.read_text()) == ("# comment" in old)
