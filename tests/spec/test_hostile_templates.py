"""Hostile templates: validate refuses, located, what rendering refuses, and rendering stays bounded.

A spec value such as ``url: "{{ env.SHOP_URL }}"`` is a Jinja template, rendered in the sandbox when
the daemon starts. Three holes were found and are pinned here, each at validate time (a located
error) and at render time (a clear UsageError, never a crash):

* ``{{ ''.__class__ }}`` passed validate and failed only in the daemon;
* ``{{ 'x' * 10**13 }}`` killed the daemon with MemoryError: what a template produces is bounded;
* ``{{ secret['../../../../etc/hostname'] }}`` read a file outside the secrets folder and sent it on.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from engine.errors import Severity, UsageError
from engine.secrets import Masker, render_values
from engine.spec import validate_spec
from engine.spec.templates import MAX_TEMPLATE_OUTPUT, analyse_template
from tests.conftest import WriteFiles

SPEC = """\
seamline: 1
client: demo
systems:
  shop:
    connector: magento
    url: "TEMPLATE"
    auth: { bearer: { token: "{{ secret.SHOP_TOKEN }}" } }
flows:
  hook:
    trigger: { event: { webhook: /hooks/customer } }
    target: { system: shop, write: customers, key: email, mode: update }
"""
ENV = {"SHOP_TOKEN": "not-a-real-token", "SHOP_URL": "https://shop.example", "SEAMLINE_SECRETS_DIR": "/nonexistent"}
WHERE = "seamline.yaml:6:11"  # the '{' that opens the template in `url: "TEMPLATE"`


def validate_errors(write_files: WriteFiles, template: str) -> list[str]:
    write_files({"seamline.yaml": SPEC.replace("TEMPLATE", template.replace('"', '\\"'))})
    report = validate_spec(Path("seamline.yaml"), environ=ENV)
    return [
        f"{d.location()}: {d.message}"
        for d in report.diagnostics
        if d.severity is Severity.ERROR and d.path == "systems.shop.url"
    ]


def render(template: str, environ: dict[str, str] | None = None, masker: Masker | None = None) -> str:
    rendered = render_values(template, masker=masker or Masker(), environ=environ or ENV, where="systems.shop.url")
    assert isinstance(rendered, str)
    return rendered


def test_the_spec_is_valid_with_an_ordinary_template(write_files: WriteFiles) -> None:
    assert validate_errors(write_files, "{{ env.SHOP_URL }}") == []
    assert render("{{ env.SHOP_URL ~ '/rest' }}") == "https://shop.example/rest"


# -- what the sandbox refuses is a validate error --------------------------------------------------


@pytest.mark.parametrize(
    ("template", "attribute"),
    [
        ("{{ ''.__class__ }}", "__class__"),
        ("{{ env.__class__ }}", "__class__"),
        ("{{ env.SHOP_URL.__class__.__mro__ }}", "__class__"),
        ("{{ env.SHOP_URL['__class__'] }}", "__class__"),
        ("{{ env.SHOP_URL.upper.__self__ }}", "__self__"),
        ("{{ [].append(1) }}", "append"),
    ],
)
def test_unsafe_attributes_are_validate_errors(write_files: WriteFiles, template: str, attribute: str) -> None:
    errors = validate_errors(write_files, template)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{WHERE}: "), errors
    assert f"'{attribute}'" in errors[0] and "sandbox" in errors[0], errors
    with pytest.raises(UsageError, match=r"cannot render the template at systems\.shop\.url"):
        render(template)


# -- what a template produces is bounded -----------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 10**13 }}",
        "{{ ['x'] * 10**13 }}",
        "{{ 10 ** (10 ** 10) }}",
        "{{ 'x' * 1000 * 1000 * 1000 }}",
        "{{ '%0999999999d' % 1 }}",
    ],
)
def test_constant_blowups_are_validate_errors_and_render_errors(write_files: WriteFiles, template: str) -> None:
    started = time.perf_counter()
    errors = validate_errors(write_files, template)
    assert time.perf_counter() - started < 2
    assert len(errors) == 1 and errors[0].startswith(f"{WHERE}: "), errors
    assert f"{MAX_TEMPLATE_OUTPUT:,}" in errors[0] or "too large" in errors[0], errors
    with pytest.raises(UsageError, match=r"cannot render the template at systems\.shop\.url: .*(limit|too large)"):
        render(template)


@pytest.mark.parametrize(
    "template",
    [
        "{{ env.SHOP_URL * 10**9 }}",  # the size depends on a value: only rendering can tell
        "{{ (env.SHOP_URL * 50000) | replace('h', env.SHOP_URL * 50000) }}",
        "{{ (env.SHOP_URL * 50000).replace('h', env.SHOP_URL * 50000) }}",
        "{{ ('\t' * 50000 ~ env.SHOP_URL).expandtabs(50000) }}",
        "{{ env.SHOP_URL.center(10**9) }}",
        "{{ (env.SHOP_URL * 50000).split('/') | join(env.SHOP_URL * 50000) }}",
        "{{ " + " ~ ".join(["(env.SHOP_URL * 50000)"] * 40) + " }}",  # each part fits; together they do not
    ],
)
def test_blowups_from_values_are_refused_when_rendering(template: str) -> None:
    started = time.perf_counter()
    with pytest.raises(UsageError, match=r"cannot render the template at systems.shop.url: .*limit"):
        render(template)
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize(
    ("template", "what"),
    [
        ("{{ range(10**9) | list }}", "range"),
        ("{{ lipsum(10**7) }}", "lipsum"),
        ("{{ env.SHOP_URL | center(10**9) }}", "center"),
        ("{{ env.SHOP_URL.format(1) }}", "format"),
        ("{% set a = env.SHOP_URL %}{% set a = a ~ a %}{{ a }}", "set"),
        ("{% for i in env.SHOP_URL %}{% for j in env.SHOP_URL %}{{ env.SHOP_URL }}{% endfor %}{% endfor %}", "for"),
    ],
)
def test_what_templates_cannot_do_is_refused_by_both(write_files: WriteFiles, template: str, what: str) -> None:
    errors = validate_errors(write_files, template)
    assert errors and errors[0].startswith(f"{WHERE}: ") and f"'{what}'" in errors[0], errors
    with pytest.raises(UsageError, match=f"cannot render the template at systems.shop.url: .*'{what}'"):
        render(template)


def test_small_results_are_fine() -> None:
    assert render("{{ 'ab' * 3 }}") == "ababab"
    assert render("{{ env.SHOP_URL | replace('https', 'http') | upper }}") == "HTTP://SHOP.EXAMPLE"
    assert render("{{ env.SHOP_URL.split('//')[1] }}") == "shop.example"
    assert render("{{ env.SHOP_URL | default('x') | length }}") == "20"
    assert render("{% if env.SHOP_URL %}{{ 2 ** 10 }}{% endif %}") == "1024"
    assert render("{{ 'x' * " + str(MAX_TEMPLATE_OUTPUT) + " }}") == "x" * MAX_TEMPLATE_OUTPUT


# -- secret names are names, and the secrets folder is not a way out ------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "{{ secret['../../../../etc/hostname'] }}",
        "{{ secret['/etc/hostname'] }}",
        "{{ secret['a/b'] }}",
        "{{ secret['..'] }}",
        "{{ secret['a..b'] }}",
        "{{ secret['-x'] }}",
        "{{ secret[''] }}",
    ],
)
def test_secret_names_are_checked_by_validate(write_files: WriteFiles, template: str) -> None:
    errors = validate_errors(write_files, template)
    assert len(errors) == 1 and errors[0].startswith(f"{WHERE}: secret name "), errors


def test_a_secret_name_cannot_leave_the_secrets_folder(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (tmp_path / "hostname").write_text("outside-the-folder\n", encoding="utf-8")
    (secrets / "LINK").symlink_to(tmp_path / "hostname")
    (secrets / "ERP_PASSWORD").write_text("inside-the-folder\n", encoding="utf-8")
    environ = {"SEAMLINE_SECRETS_DIR": str(secrets), "../hostname": "from-the-environment"}
    masker = Masker()
    assert render("{{ secret.ERP_PASSWORD }}", environ, masker) == "inside-the-folder"
    for template in ("{{ secret['../hostname'] }}", "{{ secret[env.NAME] }}"):
        with pytest.raises(UsageError) as caught:
            render(template, {**environ, "NAME": "../hostname"}, masker)
        assert "outside-the-folder" not in str(caught.value)
        assert "secret" in str(caught.value)
    with pytest.raises(UsageError, match="outside \\$SEAMLINE_SECRETS_DIR") as caught:
        render("{{ secret.LINK }}", environ, masker)
    assert "outside-the-folder" not in str(caught.value)
    assert masker("outside-the-folder") == "outside-the-folder"  # never read, so never registered


def test_a_kubernetes_style_secret_link_inside_the_folder_is_read(tmp_path: Path) -> None:
    """Kubernetes mounts NAME -> ..data/NAME -> ..2024_01_01/NAME, all inside the folder."""
    secrets = tmp_path / "secrets"
    (secrets / "..2024_01_01").mkdir(parents=True)
    (secrets / "..2024_01_01" / "TOKEN").write_text("tok-123456\n", encoding="utf-8")
    (secrets / "..data").symlink_to("..2024_01_01")
    (secrets / "TOKEN").symlink_to(os.path.join("..data", "TOKEN"))
    assert render("{{ secret.TOKEN }}", {"SEAMLINE_SECRETS_DIR": str(secrets)}) == "tok-123456"


def test_analysis_does_not_evaluate_what_it_cannot_bound() -> None:
    """Compiling folds constants; a folded 10 ** 10 ** 10 would hang validate."""
    started = time.perf_counter()
    _refs, problems = analyse_template("{{ 10 ** (10 ** 10 ** 2) }}")
    assert time.perf_counter() - started < 1
    assert problems
