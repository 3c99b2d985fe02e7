"""The fake Salesforce org over real loopback HTTP: the shapes a salesforce connector relies on.

Plain httpx requests (no connector code): token endpoint, upsert codes and bodies, Salesforce's error
list, relationships by external id, SOQL paging, sObject collections, composite, sessions, faults.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from connectors.salesforce.fake import FakeSalesforce, SObjectField

CLIENT, SECRET = "app", "app-secret"
V = "/services/data/v62.0"


class Org:
    """A running fake and an httpx client holding a session token."""

    def __init__(self, fake: FakeSalesforce) -> None:
        self.fake = fake
        self.http = httpx.Client(base_url=fake.url, timeout=10)
        self.token = self.login()

    def login(self) -> str:
        answer = self.http.post(
            "/services/oauth2/token",
            data={"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": SECRET},
        )
        assert answer.status_code == 200, answer.text
        token: str = answer.json()["access_token"]
        return token

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return self.http.request(method, path if path.startswith("/services") else V + path, headers=headers, **kwargs)

    def upsert(self, sobject: str, value: str, body: Any, field: str = "Seamline_Id__c", **kw: Any) -> httpx.Response:
        return self.send("PATCH", f"/sobjects/{sobject}/{field}/{value}", json=body, **kw)

    def query(self, soql: str, **kw: Any) -> httpx.Response:
        return self.send("GET", "/query", params={"q": soql}, **kw)


@pytest.fixture
def org() -> Iterator[Org]:
    with FakeSalesforce(port=0, clients={CLIENT: SECRET}) as fake:
        client = Org(fake)
        yield client
        client.http.close()


def only_error(answer: httpx.Response) -> dict[str, Any]:
    body = answer.json()
    assert isinstance(body, list) and len(body) == 1, body
    error: dict[str, Any] = body[0]
    return error


# -- the token endpoint and sessions -------------------------------------------------------------------


def test_client_credentials_give_a_token_and_the_instance_url(org: Org) -> None:
    answer = org.http.post(
        "/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": SECRET},
    )
    body = answer.json()
    assert answer.status_code == 200
    assert body["instance_url"] == org.fake.url
    assert body["token_type"] == "Bearer"
    assert {"access_token", "id", "issued_at", "signature", "scope"} <= set(body)
    assert "expires_in" not in body  # Salesforce gives no lifetime: a session ends when the org says so


def test_client_may_authenticate_with_http_basic(org: Org) -> None:
    answer = org.http.post("/services/oauth2/token", data={"grant_type": "client_credentials"}, auth=(CLIENT, SECRET))
    assert answer.status_code == 200


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": "wrong"}, "invalid_client"),
        ({"grant_type": "client_credentials", "client_id": "nobody", "client_secret": SECRET}, "invalid_client_id"),
        ({"grant_type": "password", "client_id": CLIENT, "client_secret": SECRET}, "unsupported_grant_type"),
    ],
)
def test_bad_token_requests_answer_oauth_errors(org: Org, form: dict[str, str], error: str) -> None:
    answer = org.http.post("/services/oauth2/token", data=form)
    assert answer.status_code == 400
    assert answer.json()["error"] == error
    assert answer.json()["error_description"]


def test_api_calls_need_a_live_session(org: Org) -> None:
    assert org.upsert("Account", "A-1", {"Name": "Acme"}).status_code == 201
    anonymous = org.http.get(V + "/sobjects/Account/Seamline_Id__c/A-1")
    assert anonymous.status_code == 401
    assert only_error(anonymous)["errorCode"] == "INVALID_SESSION_ID"
    org.fake.expire_tokens()
    expired = org.send("GET", "/sobjects/Account/Seamline_Id__c/A-1")
    assert expired.status_code == 401
    assert only_error(expired) == {
        "message": "Session expired or invalid",
        "errorCode": "INVALID_SESSION_ID",
        "fields": [],
    }
    org.token = org.login()
    assert org.send("GET", "/sobjects/Account/Seamline_Id__c/A-1").status_code == 200


def test_a_session_ends_after_token_ttl() -> None:
    with FakeSalesforce(port=0, clients={CLIENT: SECRET}, token_ttl=0) as fake:
        org = Org(fake)
        assert org.upsert("Account", "A-1", {"Name": "Acme"}).status_code == 401


# -- upserts ---------------------------------------------------------------------------------------


def test_upsert_creates_with_201_then_updates_with_200(org: Org) -> None:
    created = org.upsert("Account", "A-1", {"Name": "Acme"})
    assert created.status_code == 201
    body = created.json()
    assert body["success"] is True and body["errors"] == [] and body["created"] is True
    assert body["id"].startswith("001") and len(body["id"]) == 18
    updated = org.upsert("Account", "a-1", {"Name": "Acme GmbH"})  # external ids match without case
    assert updated.status_code == 200
    assert updated.json() == {"id": body["id"], "success": True, "errors": [], "created": False}
    stored = org.send("GET", f"/sobjects/Account/{body['id']}").json()
    assert stored["Name"] == "Acme GmbH" and stored["Seamline_Id__c"] == "A-1"
    assert stored["attributes"] == {"type": "Account", "url": f"{V}/sobjects/Account/{body['id']}"}
    assert len(org.fake.records("Account")) == 1


def test_before_v46_an_update_answers_204_without_a_body(org: Org) -> None:
    path = "/services/data/v45.0/sobjects/Account/Seamline_Id__c/A-1"
    created = org.send("PATCH", path, json={"Name": "Acme"})
    assert created.status_code == 201 and "created" not in created.json()
    updated = org.send("PATCH", path, json={"Name": "Acme 2"})
    assert updated.status_code == 204 and updated.content == b""


def test_update_only_does_not_create(org: Org) -> None:
    answer = org.send("PATCH", "/sobjects/Account/Seamline_Id__c/A-9?updateOnly=true", json={"Name": "X"})
    assert answer.status_code == 404
    assert only_error(answer)["errorCode"] == "NOT_FOUND"
    assert org.fake.records("Account") == []


def test_the_external_id_may_not_be_repeated_in_the_body(org: Org) -> None:
    answer = org.upsert("Account", "A-1", {"Name": "Acme", "Seamline_Id__c": "A-1"})
    assert answer.status_code == 400
    assert only_error(answer)["errorCode"] == "INVALID_FIELD"


def test_upsert_on_a_field_that_is_no_external_id_is_404(org: Org) -> None:
    answer = org.upsert("Account", "x", {"Name": "Acme"}, field="Name")
    assert answer.status_code == 404
    assert "Provided external ID field does not exist or is not accessible: Name" in only_error(answer)["message"]


def test_several_matches_answer_300_with_their_urls(org: Org) -> None:
    org.fake.seed("Account", [{"Name": "A", "Seamline_Id__c": "DUP"}, {"Name": "B", "Seamline_Id__c": "dup"}])
    answer = org.upsert("Account", "DUP", {"Name": "C"})
    assert answer.status_code == 300
    assert len(answer.json()) == 2 and all(u.startswith(f"{V}/sobjects/Account/001") for u in answer.json())


# -- validation: Salesforce's error list -------------------------------------------------------------------


def test_a_missing_required_field_names_it(org: Org) -> None:
    answer = org.upsert("Contact", "C-1", {"FirstName": "Ada"})
    assert answer.status_code == 400
    assert answer.json() == [
        {
            "message": "Required fields are missing: [LastName]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["LastName"],
        }
    ]
    several = only_error(org.upsert("Opportunity", "O-1", {"Amount": 10}))
    assert several["fields"] == ["Name", "StageName", "CloseDate"]
    assert org.fake.writes()[-1]["status"] == 400 and org.fake.applied_count() == 0


def test_an_update_needs_no_required_fields_but_may_not_clear_one(org: Org) -> None:
    assert org.upsert("Contact", "C-1", {"LastName": "Lovelace"}).status_code == 201
    assert org.upsert("Contact", "C-1", {"Title": "Countess"}).status_code == 200
    cleared = only_error(org.upsert("Contact", "C-1", {"LastName": None}))
    assert cleared["errorCode"] == "REQUIRED_FIELD_MISSING" and cleared["fields"] == ["LastName"]


@pytest.mark.parametrize(
    ("sobject", "body", "code", "fields"),
    [
        ("Account", {"Name": "A", "Colour__c": "red"}, "INVALID_FIELD", []),
        ("Opportunity", {"Name": "O", "StageName": "Prospecting", "CloseDate": "2025-01-31", "IsWon": True},
         "INVALID_FIELD_FOR_INSERT_UPDATE", ["IsWon"]),
        ("Account", {"Name": "A" * 256}, "STRING_TOO_LONG", ["Name"]),
        ("Opportunity", {"Name": "O", "StageName": "Dreaming", "CloseDate": "2025-01-31"},
         "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", ["StageName"]),
        ("Contact", {"LastName": "L", "Email": "not-an-email"}, "INVALID_EMAIL_ADDRESS", ["Email"]),
        ("Opportunity", {"Name": "O", "StageName": "Prospecting", "CloseDate": "31.01.2025"}, "JSON_PARSER_ERROR", []),
        ("Account", {"Name": "A", "NumberOfEmployees": "many"}, "JSON_PARSER_ERROR", []),
        ("Contact", {"LastName": "L", "AccountId": "xyz"}, "MALFORMED_ID", ["AccountId"]),
        ("Contact", {"LastName": "L", "AccountId": "001000000000000AAA"}, "INVALID_CROSS_REFERENCE_KEY", ["AccountId"]),
    ],
)  # fmt: skip
def test_invalid_values_answer_the_orgs_error_codes(
    org: Org, sobject: str, body: dict[str, Any], code: str, fields: list[str]
) -> None:
    answer = org.upsert(sobject, "X-1", body)
    assert answer.status_code == 400
    error = only_error(answer)
    assert error["errorCode"] == code and error["fields"] == fields and error["message"]


def test_a_second_record_may_not_take_an_external_id(org: Org) -> None:
    assert org.upsert("Account", "A-1", {"Name": "Acme"}).status_code == 201
    answer = org.send("POST", "/sobjects/Account", json={"Name": "Other", "Seamline_Id__c": "a-1"})
    assert answer.status_code == 400
    assert only_error(answer)["errorCode"] == "DUPLICATE_VALUE"


def test_a_reference_can_name_its_record_by_external_id(org: Org) -> None:
    account = org.upsert("Account", "A-1", {"Name": "Acme"}).json()["id"]
    contact = org.upsert("Contact", "C-1", {"LastName": "Lovelace", "Account": {"Seamline_Id__c": "A-1"}})
    assert contact.status_code == 201
    assert org.fake.find("Contact", "Seamline_Id__c", "C-1")["AccountId"] == account  # type: ignore[index]
    order = org.upsert(
        "Order", "SO-1", {"Account": {"Seamline_Id__c": "A-1"}, "EffectiveDate": "2025-01-14", "Status": "Draft"}
    )
    assert order.status_code == 201
    stored = org.fake.find("Order", "Seamline_Id__c", "SO-1")
    assert stored is not None and stored["AccountId"] == account and stored["OrderNumber"] == "00000100"
    missing = only_error(org.upsert("Contact", "C-2", {"LastName": "L", "Account": {"Seamline_Id__c": "nope"}}))
    assert missing["errorCode"] == "INVALID_FIELD"
    assert missing["message"] == "Foreign key external ID: nope not found for field Seamline_Id__c in entity Account"


def test_extra_fields_extend_an_sobject() -> None:
    extra = {"Account": [SObjectField("ERP_Number__c", "string", 20, external_id=True)]}
    with FakeSalesforce(port=0, clients={CLIENT: SECRET}, extra_fields=extra) as fake:
        org = Org(fake)
        assert org.upsert("Account", "K-1", {"Name": "Acme"}, field="ERP_Number__c").status_code == 201
        describe = org.send("GET", "/sobjects/Account/describe").json()
        assert {"name": "ERP_Number__c", "externalId": True}.items() <= next(
            f for f in describe["fields"] if f["name"] == "ERP_Number__c"
        ).items()


# -- SOQL ------------------------------------------------------------------------------------------


def seed_accounts(fake: FakeSalesforce, count: int) -> list[str]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return fake.seed(
        "Account",
        [
            {
                "Name": f"Account {i}",
                "Seamline_Id__c": f"A-{i}",
                "SystemModstamp": (start + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
            }
            for i in range(1, count + 1)
        ],
    )


def test_soql_pages_through_next_records_url(org: Org) -> None:
    seed_accounts(org.fake, 7)
    org.fake.configure(max_batch_size=3)
    first = org.query("SELECT Id, Name FROM Account ORDER BY SystemModstamp").json()
    assert first["totalSize"] == 7 and first["done"] is False and len(first["records"]) == 3
    assert first["records"][0]["attributes"]["type"] == "Account"
    names = [r["Name"] for r in first["records"]]
    page = first
    while not page["done"]:
        page = org.send("GET", page["nextRecordsUrl"]).json()
        names += [r["Name"] for r in page["records"]]
    assert names == [f"Account {i}" for i in range(1, 8)]
    assert "nextRecordsUrl" not in page


def test_batch_size_follows_the_query_options_header(org: Org) -> None:
    seed_accounts(org.fake, 250)
    answer = org.query("SELECT Id FROM Account", headers={"Sforce-Query-Options": "batchSize=200"}).json()
    assert len(answer["records"]) == 200 and answer["done"] is False


def test_an_unknown_query_locator_is_invalid(org: Org) -> None:
    seed_accounts(org.fake, 5)
    org.fake.configure(max_batch_size=2)
    first = org.query("SELECT Id FROM Account").json()
    org.fake.expire_query_locators()
    answer = org.send("GET", first["nextRecordsUrl"])
    assert answer.status_code == 400 and only_error(answer)["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_soql_filters_sorts_and_selects_related_fields(org: Org) -> None:
    seed_accounts(org.fake, 5)
    org.upsert("Contact", "C-1", {"LastName": "Lovelace", "Account": {"Seamline_Id__c": "A-2"}})
    org.upsert("Contact", "C-2", {"LastName": "Byron", "Email": "b@example.com"})
    since = org.query(
        "SELECT Name FROM Account WHERE SystemModstamp >= 2025-01-01T03:00:00Z AND (Name LIKE 'account%' "
        "OR Name IN ('x')) ORDER BY SystemModstamp DESC LIMIT 2"
    ).json()
    assert [r["Name"] for r in since["records"]] == ["Account 5", "Account 4"]
    contacts = org.query("SELECT LastName, Account.Seamline_Id__c FROM Contact ORDER BY LastName").json()["records"]
    assert contacts[0]["Account"] is None
    assert contacts[1]["Account"]["Seamline_Id__c"] == "A-2"
    assert contacts[1]["Account"]["attributes"]["type"] == "Account"
    nulls = org.query("SELECT LastName FROM Contact WHERE Email = null").json()["records"]
    assert [r["LastName"] for r in nulls] == ["Lovelace"]


@pytest.mark.parametrize(
    ("soql", "code"),
    [
        ("SELECT Id FROM Account WHERE SystemModstamp >= '2025-01-01T00:00:00Z'", "INVALID_FIELD"),
        ("SELECT Id FROM Account WHERE Name = 5", "INVALID_FIELD"),
        ("SELECT Colour__c FROM Account", "INVALID_FIELD"),
        ("SELECT Id FROM Planet", "INVALID_TYPE"),
        ("SELECT Id Account", "MALFORMED_QUERY"),
        ("SELECT Id FROM Account WHERE", "MALFORMED_QUERY"),
    ],
)
def test_bad_soql_answers_the_orgs_error_codes(org: Org, soql: str, code: str) -> None:
    answer = org.query(soql)
    assert answer.status_code == 400
    assert only_error(answer)["errorCode"] == code


# -- sObject collections and composite ----------------------------------------------------------------


def collection(*records: dict[str, Any], all_or_none: bool = False) -> dict[str, Any]:
    return {"allOrNone": all_or_none, "records": [{"attributes": {"type": "Account"}, **r} for r in records]}


def test_collection_upsert_answers_one_result_per_record(org: Org) -> None:
    org.upsert("Account", "A-1", {"Name": "Acme"})
    records = (
        {"Seamline_Id__c": "A-1", "Name": "Acme 2"},
        {"Seamline_Id__c": "A-2"},
        {"Seamline_Id__c": "A-3", "Name": "C"},
    )
    answer = org.send("PATCH", "/composite/sobjects/Account/Seamline_Id__c", json=collection(*records))
    assert answer.status_code == 200
    first, second, third = answer.json()
    assert first["success"] is True and first["created"] is False
    missing = {
        "statusCode": "REQUIRED_FIELD_MISSING",
        "message": "Required fields are missing: [Name]",
        "fields": ["Name"],
    }
    assert second == {"success": False, "errors": [missing]}
    assert third["success"] is True and third["created"] is True
    assert [e["via"] for e in org.fake.writes()][-3:] == ["composite/sobjects"] * 3


def test_collection_all_or_none_rolls_everything_back(org: Org) -> None:
    answer = org.send(
        "PATCH",
        "/composite/sobjects/Account/Seamline_Id__c",
        json=collection({"Seamline_Id__c": "A-1", "Name": "A"}, {"Seamline_Id__c": "A-2"}, all_or_none=True),
    )
    first, second = answer.json()
    assert first["success"] is False and first["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert second["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert org.fake.records("Account") == [] and org.fake.applied_count() == 0


def test_collection_refuses_duplicates_and_oversized_requests(org: Org) -> None:
    twice = org.send(
        "PATCH",
        "/composite/sobjects/Account/Seamline_Id__c",
        json=collection({"Seamline_Id__c": "A-1", "Name": "A"}, {"Seamline_Id__c": "a-1", "Name": "B"}),
    ).json()
    assert [r["errors"][0]["statusCode"] for r in twice] == ["DUPLICATE_EXTERNAL_ID"] * 2
    many = collection(*({"Seamline_Id__c": f"A-{i}", "Name": "A"} for i in range(201)))
    too_many = org.send("PATCH", "/composite/sobjects/Account/Seamline_Id__c", json=many)
    assert too_many.status_code == 400 and only_error(too_many)["errorCode"] == "EXCEEDED_ID_LIMIT"


def sub(method: str, path: str, reference: str, body: Any = None) -> dict[str, Any]:
    found = {"method": method, "url": V + path, "referenceId": reference}
    return found if body is None else {**found, "body": body}


def test_composite_subrequests_reference_earlier_answers(org: Org) -> None:
    body = {
        "allOrNone": False,
        "compositeRequest": [
            sub("PATCH", "/sobjects/Account/Seamline_Id__c/A-1", "acc", {"Name": "A"}),
            sub("POST", "/sobjects/Contact", "con", {"LastName": "L", "AccountId": "@{acc.id}"}),
            sub("GET", "/sobjects/Contact/@{con.id}?fields=AccountId", "get"),
        ],
    }
    answers = org.send("POST", "/composite", json=body).json()["compositeResponse"]
    assert [a["httpStatusCode"] for a in answers] == [201, 201, 200]
    assert answers[2]["body"]["AccountId"] == answers[0]["body"]["id"]
    assert answers[1]["httpHeaders"]["Location"].startswith(f"{V}/sobjects/Contact/003")


def test_composite_all_or_none_halts_and_rolls_back(org: Org) -> None:
    body = {
        "allOrNone": True,
        "compositeRequest": [
            sub("PATCH", "/sobjects/Account/Seamline_Id__c/A-1", "a", {"Name": "A"}),
            sub("PATCH", "/sobjects/Contact/Seamline_Id__c/C-1", "b", {}),
            sub("PATCH", "/sobjects/Account/Seamline_Id__c/A-2", "c", {"Name": "C"}),
        ],
    }
    answers = org.send("POST", "/composite", json=body).json()["compositeResponse"]
    codes = [a["body"][0]["errorCode"] for a in answers]
    assert codes == ["PROCESSING_HALTED", "REQUIRED_FIELD_MISSING", "PROCESSING_HALTED"]
    assert org.fake.records("Account") == [] and org.fake.applied_count() == 0


# -- faults, limits, log, restart -------------------------------------------------------------------


def test_fail_next_answers_salesforce_errors_on_the_chosen_paths(org: Org) -> None:
    org.fake.fail_next(1, status=503, retry_after="2", only="/services/data/")
    assert org.login()  # the token endpoint is not on that path
    failed = org.upsert("Account", "A-1", {"Name": "A"})
    assert failed.status_code == 503 and failed.headers["Retry-After"] == "2"
    assert only_error(failed)["errorCode"] == "SERVER_UNAVAILABLE"
    org.fake.fail_next(1, status=400, error_code="UNABLE_TO_LOCK_ROW", message="unable to obtain exclusive access")
    assert only_error(org.upsert("Account", "A-1", {"Name": "A"}))["errorCode"] == "UNABLE_TO_LOCK_ROW"
    assert org.upsert("Account", "A-1", {"Name": "A"}).status_code == 201


def test_the_api_allowance_runs_out(org: Org) -> None:
    org.fake.configure(api_limit=2)
    first = org.upsert("Account", "A-1", {"Name": "A"})
    assert first.headers["Sforce-Limit-Info"] == "api-usage=1/2"
    org.upsert("Account", "A-1", {"Name": "A"})
    over = org.upsert("Account", "A-1", {"Name": "A"})
    assert over.status_code == 403 and only_error(over)["errorCode"] == "REQUEST_LIMIT_EXCEEDED"


def test_the_write_log_counts_only_writes_that_changed_data(org: Org) -> None:
    org.upsert("Account", "A-1", {"Name": "A"})
    org.upsert("Account", "A-1", {"Name": "A"})
    org.upsert("Account", "A-1", {"Name": "B"})
    org.upsert("Account", "A-2", {})
    log = org.fake.writes("Account")
    assert [(e["status"], e["created"], e["applied"]) for e in log] == [
        (201, True, True),
        (200, False, False),
        (200, False, True),
        (400, False, False),
    ]
    assert org.fake.applied_count("Account") == 2


def test_stopped_org_refuses_then_serves_its_data_again_on_the_same_port(org: Org) -> None:
    org.upsert("Account", "A-1", {"Name": "A"})
    port = org.fake.port
    org.fake.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{org.fake.url}/__fake/health", timeout=2)
    org.fake.start()
    assert org.fake.port == port
    assert org.send("GET", "/sobjects/Account/Seamline_Id__c/A-1").json()["Name"] == "A"


def test_the_admin_api_drives_faults_and_reads_the_log(org: Org) -> None:
    assert org.http.post("/__fake/faults", json={"fail_next": {"count": 1, "status": 500}}).status_code == 200
    assert only_error(org.upsert("Account", "A-1", {"Name": "A"}))["errorCode"] == "UNKNOWN_EXCEPTION"
    org.upsert("Account", "A-1", {"Name": "A"})
    assert [e["status"] for e in org.http.get("/__fake/log").json()] == [201]
    assert org.http.post("/__fake/expire-tokens").status_code == 200
    assert org.upsert("Account", "A-1", {"Name": "A"}).status_code == 401


def test_the_command_line_serves_an_org_with_extra_fields() -> None:
    command = [sys.executable, "-m", "connectors.salesforce.fake", "--port", "0", "--client-id", CLIENT]
    command += ["--client-secret", SECRET, "--field", "Account.ERP_Number__c:string:external"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "fake salesforce on http://127.0.0.1:<port> (...)"
        url = line.split(" on ", 1)[1].split()[0]
        with httpx.Client(base_url=url, timeout=10) as http:
            form = {"grant_type": "client_credentials", "client_id": CLIENT, "client_secret": SECRET}
            token = http.post("/services/oauth2/token", data=form).json()["access_token"]
            answer = http.patch(
                f"{V}/sobjects/Account/ERP_Number__c/K-1",
                json={"Name": "Acme"},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert answer.status_code == 201
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_the_command_line_refuses_a_bad_field() -> None:
    command = [sys.executable, "-m", "connectors.salesforce.fake", "--field", "Planet.Name__c"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2 and "OBJECT.NAME[:TYPE][:external]" in result.stderr
