"""mesh.faces.compss.answers: the COMPSs agent REST formats, parsed from the exact bytes COMPSs sends.

startApplication: the bodies compss_agent_call_operation sends, then lang, names,
parameter types and the other fields on built bodies. Malformed and hostile XML:
``tests/test_compss_hostile_xml.py``; add/remove/lost resources and the resources JSON:
``tests/test_compss_resources.py``.

Fixtures (byte-exact request bodies, and where they come from) and builders:
``tests/compss_helpers.py``. ``tests/test_compss_rest.py`` imports its request bodies
from this module, so the ones it uses are re-imported here.
"""

from __future__ import annotations

import base64

import pytest

from mesh.faces.compss.answers import (
    Orchestrator,
    parse_start_application,
)
from tests.compss_helpers import (
    CALL_JAVA_DEFAULT,
    CALL_PYTHON_ADD,
    CALL_PYTHON_ADD_ACCESS_MODE,
    CALL_PYTHON_ARRAY,
    CALL_PYTHON_CEI_STOP_FORWARD,
    CALL_PYTHON_LOWERCASE_DOT_PY,
    CALL_PYTHON_MAIN_NO_ARGS,
    CALL_PYTHON_UNICODE,
    b64,
    element,
    param,
    refused,
    start,
)

# ---------------------------------------------------------------------------- startApplication, real bodies


@pytest.mark.timeout(10)
def test_call_operation_python_two_arguments():
    req = parse_start_application(CALL_PYTHON_ADD)
    assert (req.lang, req.module, req.function) == ("PYTHON", "operator", "add")
    assert req.args == ("2", "3")  # strings, as a PyCOMPSs function receives them
    assert req.param_types == ("STRING_64_T", "STRING_64_T")
    assert req.cei_class is None and req.has_result is False
    assert req.action is None and req.forward_to == () and not req.stop_after
    assert req.orchestrator is None and req.service_instance_id is None


@pytest.mark.timeout(10)
def test_call_operation_access_mode_variant_parses_the_same():
    assert parse_start_application(CALL_PYTHON_ADD_ACCESS_MODE) == parse_start_application(CALL_PYTHON_ADD)


@pytest.mark.timeout(10)
def test_call_operation_unicode_arguments():
    req = parse_start_application(CALL_PYTHON_UNICODE)
    assert req.args == ("héllo wörld", "日本語 🙂")
    # the fixture holds exactly base64('#' + argument), UTF-8 encoded
    for arg in req.args:
        assert b64(arg).encode() in CALL_PYTHON_UNICODE


@pytest.mark.timeout(10)
def test_call_operation_default_method_without_arguments():
    req = parse_start_application(CALL_PYTHON_MAIN_NO_ARGS)
    assert (req.module, req.function, req.args) == ("test_app", "main", ())


@pytest.mark.timeout(10)
def test_call_operation_cei_stop_and_forward():
    req = parse_start_application(CALL_PYTHON_CEI_STOP_FORWARD)
    assert (req.module, req.function, req.args) == ("mesh.demo_tasks", "where", ("7",))
    assert req.cei_class == "demo.Itf"
    assert req.action == "stop" and req.stop_after
    assert req.forward_to == ("http://10.0.0.2:46201", "http://10.0.0.3:46301")


@pytest.mark.timeout(10)
def test_call_operation_array_is_one_list_argument():
    req = parse_start_application(CALL_PYTHON_ARRAY)
    assert req.args == (["a", "b"],)
    assert req.param_types == ("OBJECT_T",)


@pytest.mark.timeout(10)
def test_call_operation_lowercase_lang():
    req = parse_start_application(CALL_PYTHON_LOWERCASE_DOT_PY)
    assert (req.lang, req.module, req.args) == ("PYTHON", "operator", ("1", "1"))


@pytest.mark.timeout(10)
def test_call_operation_java_is_not_acceptable():
    message = refused(parse_start_application, CALL_JAVA_DEFAULT, 406)
    assert message.startswith("Unsupported language.")


# ---------------------------------------------------------------------------- startApplication, lang and fields


@pytest.mark.timeout(10)
@pytest.mark.parametrize("lang", ["JAVA", "C", "R", "COBOL", "", "PYTHON3"])
def test_other_langs_are_406(lang):
    refused(parse_start_application, start(param("STRING_64_T", element(b64("x"))), lang=lang), 406)


@pytest.mark.timeout(10)
def test_missing_lang_means_java_so_406():
    refused(parse_start_application, start(lang=None), 406)


@pytest.mark.timeout(10)
def test_lang_is_checked_before_other_fields():
    body = b'<startApplication><lang>JAVA</lang></startApplication>'
    refused(parse_start_application, body, 406)
    refused(parse_start_application, b'<startApplication><lang>PYTHON</lang></startApplication>', 400)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("body", [
    b'<startApplication><lang>PYTHON</lang><methodName>add</methodName></startApplication>',
    b'<startApplication><lang>PYTHON</lang><className>operator</className></startApplication>',
    start(class_name=""),
    start(method="  "),
    start(class_name="dir/app.py"),
    start(class_name="1st"),
    start(class_name="../evil"),
    start(class_name="a..b"),
    start(method="add(1)"),
    start(extra="<className>other</className>"),  # two <className>
    start(extra="<lang>PYTHON</lang>"),  # two <lang>
])
def test_missing_or_bad_names_are_400(body):
    refused(parse_start_application, body, 400)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("params", [
    '<params paramId="0"><direction>IN</direction></params>',  # no type, no value
    param("STRING_64_T", ""),  # no <element>
    param("STRING_64_T", '<element paramId="0"><className>java.lang.String</className></element>'),  # no <value>
    param("STRING_64_T", element(b64("a")) + element(b64("b"))),  # two elements
    param("STRING_64_T", element(b64("a")), mode="<direction>OUT</direction>"),
    param("STRING_64_T", element(b64("a")), mode="<accessMode>WRITE</accessMode>"),
    param("OBJECT_T", element("rO0ABXQAAWE=", class_name="java.lang.Object")),  # a serialized Java object
    param("FILE_T", element("/etc/passwd")),
    param("COLLECTION_T", element("x")),
    param("NO_SUCH_T", element("x")),
    param("STRING_64_T", '<array paramId="0"><componentClassname>java.lang.String</componentClassname></array>'),
    param("OBJECT_T", '<array paramId="0"><componentClassname>java.lang.Integer</componentClassname>'
                      '<values>' + element("1", class_name="java.lang.Integer") + '</values></array>'),
    param("INT_T", element("twelve")),
    param("INT_T", element(str(2**31))),
    param("BYTE_T", element("128")),
    param("DOUBLE_T", element("1e999")),
    param("DOUBLE_T", element("")),
    param("BOOLEAN_T", element("yes")),
    param("CHAR_T", element("ab")),
])
def test_bad_parameters_are_400(params):
    refused(parse_start_application, start(params), 400)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("extra", ["<target><type>OBJECT_T</type></target>", "<prolog><binary>x</binary></prolog>",
                                   "<epilog><binary>x</binary></epilog>", "<hasResult>maybe</hasResult>"])
def test_unsupported_request_parts_are_400(extra):
    body = start(param("STRING_64_T", element(b64("a"))), extra=extra).replace(
        b"<hasResult>false</hasResult>", b"")
    refused(parse_start_application, body, 400)


@pytest.mark.timeout(10)
def test_other_parameter_types():
    params = "".join([
        param("INT_T", element(" 42 "), 0),
        param("LONG_T", element(str(-(2**63))), 1),
        param("DOUBLE_T", element("2.5"), 2),
        param("FLOAT_T", element("-INF"), 3),
        param("BOOLEAN_T", element("true"), 4),
        param("BOOLEAN_T", element("0"), 5),
        param("NULL_T", element(""), 6),
        param("CHAR_T", element("é"), 7),
        param("STRING_T", element("  spaced  #kept "), 8),
        param("STRING_64_T", element(b64("#tag")), 9),
        param("STRING_64_T", element(base64.b64encode(b"no marker").decode()), 10),
        param("STRING_64_T", element(b64(""), 11), 11),
    ])
    req = parse_start_application(start(params))
    assert req.args == (42, -(2**63), 2.5, float("-inf"), True, False, None, "é", "  spaced  #kept ",
                        "#tag", "no marker", "")
    assert req.param_types[:3] == ("INT_T", "LONG_T", "DOUBLE_T")


@pytest.mark.timeout(10)
def test_unicode_arguments_round_trip():
    args = ["ünïcödé", "Ωμέγα", "中文字符", "🚀🙂 emoji", "e\u0301 combining", "tab\tnew\nline", "<&>\"'"]
    params = "".join(param("STRING_64_T", element(b64(a), i), i) for i, a in enumerate(args))
    assert parse_start_application(start(params)).args == tuple(args)
    # STRING_T carries the UTF-8 text itself
    body = start(param("STRING_T", element("日本語 &amp; ñ")))
    assert parse_start_application(body).args == ("日本語 & ñ",)


@pytest.mark.timeout(10)
def test_wrapped_base64_is_accepted():
    long_arg = "x" * 200
    encoded = b64(long_arg)
    wrapped = "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    assert parse_start_application(start(param("STRING_64_T", element(wrapped)))).args == (long_arg,)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("value", [
    "not base64!!",
    "IzI",  # bad padding
    "Iz=I",
    "ñoño",  # not ASCII
    base64.b64encode(b"#\xff\xfe").decode(),  # base64 of bytes that are not UTF-8
])
def test_base64_garbage_is_400(value):
    message = refused(parse_start_application, start(param("STRING_64_T", element(value))), 400)
    assert "base64" in message


@pytest.mark.timeout(10)
def test_base64_garbage_in_an_array_is_400():
    array = ('<array paramId="0"><componentClassname>java.lang.String</componentClassname><values>'
             + element("%%%") + "</values></array>")
    refused(parse_start_application, start(param("OBJECT_T", array)), 400)


@pytest.mark.timeout(10)
def test_orchestrator_and_service_instance_are_kept():
    extra = ("<serviceInstanceId>c75a34da-3a1f</serviceInstanceId>"
             "<orchestrator><host>http://10.0.0.9:46100</host><method>put</method>"
             "<operation>notify</operation></orchestrator>")
    req = parse_start_application(start(param("STRING_64_T", element(b64("a"))), extra=extra))
    assert req.service_instance_id == "c75a34da-3a1f"
    assert req.orchestrator == Orchestrator("http://10.0.0.9:46100", "PUT", "notify")
    bad = extra.replace("<method>put</method>", "<method>TRACE</method>")
    refused(parse_start_application, start(extra=bad), 400)


@pytest.mark.timeout(10)
def test_unknown_elements_are_ignored_like_jaxb_does():
    body = start(param("STRING_64_T", element(b64("a"))), extra="<somethingNew>1</somethingNew>")
    assert parse_start_application(body).args == ("a",)
