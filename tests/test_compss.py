"""mesh.compss: the COMPSs agent REST formats, parsed from the exact bytes COMPSs sends.

Fixtures: the request bodies below are byte-for-byte what the COMPSs agent scripts pass to
``curl -d`` (curl sends a command-line ``-d`` string unchanged). They were produced by
running the scripts' own XML-building shell code under bash (with ``curl`` replaced by a
recorder of its ``-d`` argument), that code taken from GitHub bsc-wdc/compss:

* compss/runtime/scripts/user/compss_agent_call_operation (commit 4729d4a5): call(),
  get_args(), check_args() -- the <startApplication> document;
* compss/runtime/scripts/system/agents/commons.sh (commit ea0b7b33): get_parameters(),
  get_parameters_as_array() with <direction>IN</direction>, get_resource_description(),
  get_adaptor_properties(); and the same file at commit 07771a7f, where the parameters
  carry <accessMode>READ</accessMode> instead (CALL_PYTHON_ADD_ACCESS_MODE);
* compss/runtime/scripts/user/compss_agent_add_resources (commit ea0b7b33): add_resource();
* compss/runtime/scripts/user/compss_agent_reduce_resources (commit 069a3bb7): reduce_resource();
* compss/runtime/scripts/user/compss_agent_lost_resources (commit fe5b0d9c): notify_lost_node().

Each fixture names the command line that produced it. Keep them byte-exact: the blank
lines with four spaces are what the call script emits for an absent --cei / --stop.
"""

from __future__ import annotations

import base64
import json

import pytest

from mesh.compss import (
    COMM_AGENT_WORKER,
    MASTER_ADAPTOR,
    MAX_XML_BYTES,
    CompssRequestError,
    NodeResources,
    Orchestrator,
    Processor,
    parse_lost_node,
    parse_resources,
    parse_start_application,
    resources_json,
)

# ---------------------------------------------------------------------------- fixtures

# compss_agent_call_operation --lang=PYTHON --master_node=127.0.0.1 --master_port=46101 --method_name=add operator 2 3
CALL_PYTHON_ADD = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'  <startApplication>\n'
    b'    <lang>PYTHON</lang>\n'
    b'    \n'
    b'    <className>operator</className>\n'
    b'    <hasResult>false</hasResult>\n'
    b'    <methodName>add</methodName>\n'
    b'    \n'
    b'    <parameters>\n'
    b'      <params paramId="0">\n'
    b'        <direction>IN</direction>\n'
    b'        <paramName></paramName>\n'
    b'        <prefix></prefix>\n'
    b'        <contentType></contentType>\n'
    b'        <stdIOStream>UNSPECIFIED</stdIOStream>\n'
    b'        <type>STRING_64_T</type>\n'
    b'        <element paramId="0">\n'
    b'          <className>java.lang.String</className>\n'
    b'          <value xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">IzI=</value>\n'
    b'        </element>\n'
    b'      </params>\n'
    b'      <params paramId="1">\n'
    b'        <direction>IN</direction>\n'
    b'        <paramName></paramName>\n'
    b'        <prefix></prefix>\n'
    b'        <contentType></contentType>\n'
    b'        <stdIOStream>UNSPECIFIED</stdIOStream>\n'
    b'        <type>STRING_64_T</type>\n'
    b'        <element paramId="1">\n'
    b'          <className>java.lang.String</className>\n'
    b'          <value xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">IzM=</value>\n'
    b'        </element>\n'
    b'      </params>\n'
    b'    </parameters>\n'
    b'  </startApplication>'
)

# compss_agent_call_operation --lang=PYTHON --master_node=127.0.0.1 --master_port=46101 --method_name=concat operator "héllo wörld" "日本語 🙂"
CALL_PYTHON_UNICODE = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'  <startApplication>\n'
    b'    <lang>PYTHON</lang>\n'
    b'    \n'
    b'    <className>operator</className>\n'
    b'    <hasResult>false</hasResult>\n'
    b'    <methodName>concat</methodName>\n'
    b'    \n'
    b'    <parameters>\n'
    b'      <params paramId="0">\n'
    b'        <direction>IN</direction>\n'
    b'        <paramName></paramName>\n'
    b'        <prefix></prefix>\n'
    b'        <contentType></contentType>\n'
    b'        <stdIOStream>UNSPECIFIED</stdIOStream>\n'
    b'        <type>STRING_64_T</type>\n'
    b'        <element paramId="0">\n'
    b'          <className>java.lang.String</className>\n'
    b'          <value xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">I2jDqWxsbyB3w7ZybGQ=</value>\n'
    b'        </element>\n'
    b'      </params>\n'
    b'      <params paramId="1">\n'
    b'        <direction>IN</direction>\n'
    b'        <paramName></paramName>\n'
    b'        <prefix></prefix>\n'
    b'        <contentType></contentType>\n'
    b'        <stdIOStream>UNSPECIFIED</stdIOStream>\n'
    b'        <type>STRING_64_T</type>\n'
    b'        <element paramId="1">\n'
    b'          <className>java.lang.String</className>\n'
    b'          <value xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">I+aXpeacrOiqniDwn5mC</value>\n'
    b'        </element>\n'
    b'      </params>\n'
    b'    </parameters>\n'
    b'  </startApplication>'
)

# compss_agent_call_operation --master_node=127.0.0.1 --master_port=46101 --lang=PYTHON test_app
CALL_PYTHON_MAIN_NO_ARGS = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'  <startApplication>\n'
    b'    <lang>PYTHON</lang>\n'
    b'    \n'
    b'    <className>test_app</className>\n'
    b'    <hasResult>false</hasResult>\n'
    b'    <methodName>main</methodName>\n'
    b'    \n'
    b'    <parameters>\n'
    b'    </parameters>\n'
    b'  </startApplication>'
)

# compss_agent_call_operation --lang=PYTHON --master_node=127.0.0.1 --master_port=46101 --method_name=where --cei=demo.Itf --stop "--forward_to=10.0.0.2:46201;10.0.0.3:46301" mesh.demo_tasks 7
CALL_PYTHON_CEI_STOP_FORWARD = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'  <startApplication>\n'
    b'    <lang>PYTHON</lang>\n'
    b'    <ceiClass>demo.Itf</ceiClass>\n'
    b'    <className>mesh.demo_tasks</className>\n'
    b'    <hasResult>false</hasResult>\n'
    b'    <methodName>where</methodName>\n'
    b'    <action><actionName>stop</actionName><forwardTo><agent>http://10.0.0.2:46201</agent><agent>http://10.0.0.3:46301</agent></forwardTo></action>\n'
    b'    <parameters>\n'
    b'      <params paramId="0">\n'
    b'        <direction>IN</direction>\n'
    b'        <paramName></paramName>\n'
    b'        <prefix></prefix>\n'
    b'        <contentType></contentType>\n'
    b'        <stdIOStream>UNSPECIFIED</stdIOStream>\n'
    b'        <type>STRING_64_T</type>\n'
    b'        <element paramId="0">\n'
    b'          <className>java.lang.String</className>\n'
    b'          <value xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">Izc=</value>\n'
    b'        </element>\n'
    b'      </params>\n'
    b'    </parameters>\n'
    b'  </startApplication>'
)

# compss_agent_call_operation --lang=PYTHON --master_node=127.0.0.1 --master_port=46101 --method_name=main --array app a b
CALL_PYTHON_ARRAY = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'  <startApplication>\n'
    b'    <lang>PYTHON</lang>\n'
    b'    \n'
    b'    <className>app</className>\n'
    b'    <hasResult>false</hasResult>\n'
    b'    <methodName>main</methodName>\n'
    b'    \n'
    b'    <parameters>\n'
    b'      <params paramId="0">\n'
    b'        <direction>IN</direction>\n'
    b'        <paramName>args</paramName>\n'
    b'        <prefix></prefix>\n'
    b'        <contentType></contentType>\n'
    b'        <stdIOStream>UNSPECIFIED</stdIOStream>\n'
    b'        <type>OBJECT_T</type>\n'
    b'        <array paramId="0">\n'
    b'          <componentClassname>java.lang.String</componentClassname>\n'
    b'          <values>\n'
    b'            <element paramId="0">\n'
    b'              <className>java.lang.String</className>\n'
    b'              <value xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">I2E=</value>\n'
    b'            </element>\n'
    b'            <element paramId="1">\n'
    b'              <className>java.lang.String</className>\n'
    b'              <value xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">I2I=</value>\n'
    b'            </element>\n'
    b'          </values>\n'
    b'        </array>\n'
    b'      </params>\n'
    b'    </parameters>\n'
    b'  </startApplication>'
)

# compss_agent_call_operation --lang=python --master_node=127.0.0.1 --master_port=46101 --method_name=add operator.py 1 1   (the script drops ".py")
CALL_PYTHON_LOWERCASE_DOT_PY = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'  <startApplication>\n'
    b'    <lang>python</lang>\n'
    b'    \n'
    b'    <className>operator</className>\n'
    b'    <hasResult>false</hasResult>\n'
    b'    <methodName>add</methodName>\n'
    b'    \n'
    b'    <parameters>\n'
    b'      <params paramId="0">\n'
    b'        <direction>IN</direction>\n'
    b'        <paramName></paramName>\n'
    b'        <prefix></prefix>\n'
    b'        <contentType></contentType>\n'
    b'        <stdIOStream>UNSPECIFIED</stdIOStream>\n'
    b'        <type>STRING_64_T</type>\n'
    b'        <element paramId="0">\n'
    b'          <className>java.lang.String</className>\n'
    b'          <value xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">IzE=</value>\n'
    b'        </element>\n'
    b'      </params>\n'
    b'      <params paramId="1">\n'
    b'        <direction>IN</direction>\n'
    b'        <paramName></paramName>\n'
    b'        <prefix></prefix>\n'
    b'        <contentType></contentType>\n'
    b'        <stdIOStream>UNSPECIFIED</stdIOStream>\n'
    b'        <type>STRING_64_T</type>\n'
    b'        <element paramId="1">\n'
    b'          <className>java.lang.String</className>\n'
    b'          <value xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">IzE=</value>\n'
    b'        </element>\n'
    b'      </params>\n'
    b'    </parameters>\n'
    b'  </startApplication>'
)

# compss_agent_call_operation --master_node=127.0.0.1 --master_port=46101 es.bsc.compss.test.Test 3   (lang defaults to JAVA)
CALL_JAVA_DEFAULT = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'  <startApplication>\n'
    b'    <lang>JAVA</lang>\n'
    b'    \n'
    b'    <className>es.bsc.compss.test.Test</className>\n'
    b'    <hasResult>false</hasResult>\n'
    b'    <methodName>main</methodName>\n'
    b'    \n'
    b'    <parameters>\n'
    b'      <params paramId="0">\n'
    b'        <direction>IN</direction>\n'
    b'        <paramName>args</paramName>\n'
    b'        <prefix></prefix>\n'
    b'        <contentType></contentType>\n'
    b'        <stdIOStream>UNSPECIFIED</stdIOStream>\n'
    b'        <type>OBJECT_T</type>\n'
    b'        <array paramId="0">\n'
    b'          <componentClassname>java.lang.String</componentClassname>\n'
    b'          <values>\n'
    b'            <element paramId="0">\n'
    b'              <className>java.lang.String</className>\n'
    b'              <value xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">3</value>\n'
    b'            </element>\n'
    b'          </values>\n'
    b'        </array>\n'
    b'      </params>\n'
    b'    </parameters>\n'
    b'  </startApplication>'
)

# as CALL_PYTHON_ADD, with commons.sh at commit 07771a7f
CALL_PYTHON_ADD_ACCESS_MODE = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'  <startApplication>\n'
    b'    <lang>PYTHON</lang>\n'
    b'    \n'
    b'    <className>operator</className>\n'
    b'    <hasResult>false</hasResult>\n'
    b'    <methodName>add</methodName>\n'
    b'    \n'
    b'    <parameters>\n'
    b'      <params paramId="0">\n'
    b'        <accessMode>READ</accessMode>\n'
    b'        <paramName></paramName>\n'
    b'        <prefix></prefix>\n'
    b'        <contentType></contentType>\n'
    b'        <stdIOStream>UNSPECIFIED</stdIOStream>\n'
    b'        <type>STRING_64_T</type>\n'
    b'        <element paramId="0">\n'
    b'          <className>java.lang.String</className>\n'
    b'          <value xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">IzI=</value>\n'
    b'        </element>\n'
    b'      </params>\n'
    b'      <params paramId="1">\n'
    b'        <accessMode>READ</accessMode>\n'
    b'        <paramName></paramName>\n'
    b'        <prefix></prefix>\n'
    b'        <contentType></contentType>\n'
    b'        <stdIOStream>UNSPECIFIED</stdIOStream>\n'
    b'        <type>STRING_64_T</type>\n'
    b'        <element paramId="1">\n'
    b'          <className>java.lang.String</className>\n'
    b'          <value xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">IzM=</value>\n'
    b'        </element>\n'
    b'      </params>\n'
    b'    </parameters>\n'
    b'  </startApplication>'
)

# compss_agent_add_resources --agent_node=127.0.0.1 --agent_port=46101 --cpu=4 127.0.0.1   (COMM_AGENT_ADAPTOR as compss_setup.sh sets it)
ADD_RESOURCES_SELF = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'<newResource>\n'
    b'  <externalResource>\n'
    b'    <name>127.0.0.1</name>\n'
    b'    <description>\n'
    b'      <processors>\n'
    b'        <processor>\n'
    b'          <name>MainProcessor</name>\n'
    b'          <type>CPU</type>\n'
    b'          <architecture>[unassigned]</architecture>\n'
    b'          <computingUnits>4</computingUnits>\n'
    b'          <internalMemory>-1.0</internalMemory>\n'
    b'          <propName>[unassigned]</propName>\n'
    b'          <propValue>[unassigned]</propValue>\n'
    b'          <speed>-1.0</speed>\n'
    b'        </processor>\n'
    b'      </processors>\n'
    b'      <memorySize>-1</memorySize>\n'
    b'      <memoryType>[unassigned]</memoryType>\n'
    b'      <storageSize>-1.0</storageSize>\n'
    b'      <storageType>[unassigned]</storageType>\n'
    b'      <operatingSystemDistribution>[unassigned]</operatingSystemDistribution>\n'
    b'      <operatingSystemType>[unassigned]</operatingSystemType>\n'
    b'      <operatingSystemVersion>[unassigned]</operatingSystemVersion>\n'
    b'      <pricePerUnit>-1.0</pricePerUnit>\n'
    b'      <priceTimeUnit>-1</priceTimeUnit>\n'
    b'      <value>0.0</value>\n'
    b'      <wallClockLimit>-1</wallClockLimit>\n'
    b'    </description>\n'
    b'    <adaptor>es.bsc.compss.agent.comm.CommAgentAdaptor</adaptor>\n'
    b'    <resourceConf xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="ResourcesExternalAdaptorProperties">\n'
    b'    </resourceConf>\n'
    b'  </externalResource>\n'
    b'</newResource>'
)

# compss_agent_add_resources --agent_node=127.0.0.1 --agent_port=46101 --cpu=2 --gpu=1 --mem_size=8 --comm=es.bsc.compss.agent.comm.CommAgentAdaptor 127.0.0.2 Port=46202
ADD_RESOURCES_PEER = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'<newResource>\n'
    b'  <externalResource>\n'
    b'    <name>127.0.0.2</name>\n'
    b'    <description>\n'
    b'      <processors>\n'
    b'        <processor>\n'
    b'          <name>MainProcessor</name>\n'
    b'          <type>CPU</type>\n'
    b'          <architecture>[unassigned]</architecture>\n'
    b'          <computingUnits>2</computingUnits>\n'
    b'          <internalMemory>-1.0</internalMemory>\n'
    b'          <propName>[unassigned]</propName>\n'
    b'          <propValue>[unassigned]</propValue>\n'
    b'          <speed>-1.0</speed>\n'
    b'        </processor>\n'
    b'        <processor>\n'
    b'          <name>gpu</name>\n'
    b'          <type>GPU</type>\n'
    b'          <architecture>[unassigned]</architecture>\n'
    b'          <computingUnits>1</computingUnits>\n'
    b'          <internalMemory>-1.0</internalMemory>\n'
    b'          <propName>[unassigned]</propName>\n'
    b'          <propValue>[unassigned]</propValue>\n'
    b'          <speed>-1.0</speed>\n'
    b'        </processor>\n'
    b'      </processors>\n'
    b'      <memorySize>8</memorySize>\n'
    b'      <memoryType>[unassigned]</memoryType>\n'
    b'      <storageSize>-1.0</storageSize>\n'
    b'      <storageType>[unassigned]</storageType>\n'
    b'      <operatingSystemDistribution>[unassigned]</operatingSystemDistribution>\n'
    b'      <operatingSystemType>[unassigned]</operatingSystemType>\n'
    b'      <operatingSystemVersion>[unassigned]</operatingSystemVersion>\n'
    b'      <pricePerUnit>-1.0</pricePerUnit>\n'
    b'      <priceTimeUnit>-1</priceTimeUnit>\n'
    b'      <value>0.0</value>\n'
    b'      <wallClockLimit>-1</wallClockLimit>\n'
    b'    </description>\n'
    b'    <adaptor>es.bsc.compss.agent.comm.CommAgentAdaptor</adaptor>\n'
    b'    <resourceConf xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="ResourcesExternalAdaptorProperties">\n'
    b'      <Property>\n'
    b'        <Name>Port</Name>\n'
    b'        <Value>46202</Value>\n'
    b'      </Property>\n'
    b'    </resourceConf>\n'
    b'  </externalResource>\n'
    b'</newResource>'
)

# compss_agent_reduce_resources --agent_node=127.0.0.1 --agent_port=46101 --cpu=2 127.0.0.1
REDUCE_RESOURCES = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'<reduceNode>\n'
    b'  <workerName>127.0.0.1</workerName>\n'
    b'  <resources>\n'
    b'      <processors>\n'
    b'      <processor>\n'
    b'        <name>MainProcessor</name>\n'
    b'        <type>CPU</type>\n'
    b'        <architecture>[unassigned]</architecture>\n'
    b'        <computingUnits>2</computingUnits>\n'
    b'        <internalMemory>-1.0</internalMemory>\n'
    b'        <propName>[unassigned]</propName>\n'
    b'        <propValue>[unassigned]</propValue>\n'
    b'        <speed>-1.0</speed>\n'
    b'      </processor>\n'
    b'    </processors>\n'
    b'    <memorySize>-1</memorySize>\n'
    b'    <memoryType>[unassigned]</memoryType>\n'
    b'    <storageSize>-1.0</storageSize>\n'
    b'    <storageType>[unassigned]</storageType>\n'
    b'    <operatingSystemDistribution>[unassigned]</operatingSystemDistribution>\n'
    b'    <operatingSystemType>[unassigned]</operatingSystemType>\n'
    b'    <operatingSystemVersion>[unassigned]</operatingSystemVersion>\n'
    b'    <pricePerUnit>-1.0</pricePerUnit>\n'
    b'    <priceTimeUnit>-1</priceTimeUnit>\n'
    b'    <value>0.0</value>\n'
    b'    <wallClockLimit>-1</wallClockLimit>\n'
    b'  </resources>\n'
    b'</reduceNode>'
)

# compss_agent_lost_resources --agent_node=127.0.0.1 --agent_port=46101 127.0.0.2
LOST_NODE = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
    b'<lostNode>\n'
    b'  <workerName>127.0.0.2</workerName>\n'
    b'</lostNode>'
)

# ---------------------------------------------------------------------------- helpers


def b64(arg: str) -> str:
    """What compss_agent_call_operation sends for a PYTHON argument."""
    return base64.b64encode(("#" + arg).encode()).decode()


def param(kind: str, value_xml: str, index: int = 0, mode: str = "<direction>IN</direction>") -> str:
    """One <params> as the COMPSs agent scripts lay it out."""
    return (f'<params paramId="{index}">{mode}<paramName></paramName><prefix></prefix>'
            f'<contentType></contentType><stdIOStream>UNSPECIFIED</stdIOStream><type>{kind}</type>'
            f'{value_xml}</params>')


def element(value: str, index: int = 0, class_name: str = "java.lang.String") -> str:
    return (f'<element paramId="{index}"><className>{class_name}</className>'
            f'<value xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xmlns:xs="http://www.w3.org/2001/XMLSchema" xsi:type="xs:string">{value}</value></element>')


def start(params: str = "", lang: str | None = "PYTHON", class_name: str = "operator",
          method: str = "add", extra: str = "") -> bytes:
    lang_xml = "" if lang is None else f"<lang>{lang}</lang>"
    return (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<startApplication>{lang_xml}'
            f"<className>{class_name}</className><hasResult>false</hasResult>"
            f"<methodName>{method}</methodName>{extra}<parameters>{params}</parameters>"
            f"</startApplication>").encode()


def refused(parse, body, status: int = 400) -> str:
    with pytest.raises(CompssRequestError) as info:
        parse(body)
    assert info.value.status == status, info.value
    assert info.value.message
    return info.value.message


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


# ---------------------------------------------------------------------------- malformed and hostile XML


@pytest.mark.timeout(10)
@pytest.mark.parametrize("body", [
    b"",
    b"   \n",
    CALL_PYTHON_ADD[:-5],  # truncated
    CALL_PYTHON_ADD.replace(b"</methodName>", b"</methodname>"),  # mismatched tag
    b"<startApplication><lang>PYTHON</lang>",
    b'{"function": "operator:add", "args": [2, 3]}',  # JSON is not XML
    b"<startApplication>&undefined;</startApplication>",
    b"\xff\xfe<\x00a\x00/\x00>\x00",  # UTF-16: refused, the scripts send UTF-8
    b"<startApplication>\xe9</startApplication>",  # Latin-1 byte, not UTF-8
    b"<lostNode><workerName>x</workerName></lostNode>",  # another document
])
def test_malformed_start_application_is_400(body):
    refused(parse_start_application, body, 400)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<startApplication><lang>PYTHON</lang><className>&lol3;</className></startApplication>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE lostNode [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<lostNode><workerName>&xxe;</workerName></lostNode>"""


@pytest.mark.timeout(10)
@pytest.mark.parametrize("parse,body", [
    (parse_start_application, BILLION_LAUGHS),
    (parse_lost_node, EXTERNAL_ENTITY),
    (parse_resources, ADD_RESOURCES_SELF.replace(b"<newResource>", b'<!DOCTYPE newResource SYSTEM "http://x/d">\n<newResource>')),
    (parse_lost_node, b'<!doctype lostNode><lostNode><workerName>a</workerName></lostNode>'),
    (parse_lost_node, b'<lostNode><!ENTITY x "y"><workerName>a</workerName></lostNode>'),
    (parse_start_application, b"\xef\xbb\xbf" + BILLION_LAUGHS),  # behind a UTF-8 BOM
])
def test_dtds_and_entities_are_refused(parse, body):
    message = refused(parse, body, 400)
    assert "DOCTYPE" in message or "ENTITY" in message


@pytest.mark.timeout(10)
def test_comments_and_cdata_are_fine():
    body = LOST_NODE.replace(b"<lostNode>", b"<!-- a comment --><lostNode>").replace(
        b"127.0.0.2", b"<![CDATA[127.0.0.2]]>")
    assert parse_lost_node(body) == "127.0.0.2"


@pytest.mark.timeout(10)
def test_a_utf8_bom_is_tolerated():
    assert parse_start_application(b"\xef\xbb\xbf" + CALL_PYTHON_ADD).args == ("2", "3")


@pytest.mark.timeout(10)
def test_oversized_bodies_are_refused_before_parsing():
    huge = start(param("STRING_T", element("x" * MAX_XML_BYTES)))
    assert "bytes" in refused(parse_start_application, huge, 400)
    refused(parse_resources, b" " * (MAX_XML_BYTES + 1), 400)


@pytest.mark.timeout(10)
def test_non_bytes_body_is_400():
    refused(parse_lost_node, "<lostNode><workerName>a</workerName></lostNode>", 400)


# ---------------------------------------------------------------------------- addResources / removeResources / lostNode


@pytest.mark.timeout(10)
def test_add_resources_own_name():
    req = parse_resources(ADD_RESOURCES_SELF)
    assert (req.kind, req.name, req.cpus, req.gpus, req.fpgas) == ("add", "127.0.0.1", 4, 0, 0)
    assert req.processors == (Processor("MainProcessor", "CPU", 4),)
    assert req.adaptor == "es.bsc.compss.agent.comm.CommAgentAdaptor"
    assert req.resource_element == "externalResource"
    assert req.properties == () and req.port is None and req.address is None
    assert req.memory_size is None and req.memory_type is None  # -1 / [unassigned]
    assert req.os_type is req.os_distribution is req.os_version is None


@pytest.mark.timeout(10)
def test_add_resources_other_agent():
    req = parse_resources(ADD_RESOURCES_PEER)
    assert (req.kind, req.name, req.cpus, req.gpus) == ("add", "127.0.0.2", 2, 1)
    assert [p.type for p in req.processors] == ["CPU", "GPU"]
    assert req.memory_size == 8.0
    assert req.properties == (("Port", "46202"),)
    assert req.port == 46202 and req.address == "127.0.0.2:46202"


@pytest.mark.timeout(10)
def test_reduce_resources():
    req = parse_resources(REDUCE_RESOURCES)
    assert (req.kind, req.name, req.cpus, req.gpus) == ("reduce", "127.0.0.1", 2, 0)
    assert req.adaptor is None and req.properties == ()


@pytest.mark.timeout(10)
def test_lost_node():
    assert parse_lost_node(LOST_NODE) == "127.0.0.2"


@pytest.mark.timeout(10)
def test_nio_resource_and_other_properties():
    body = (b"<newResource><nioResource><name>w1</name><description><processors><processor>"
            b"<name>MainProcessor</name><type>CPU</type><computingUnits>3</computingUnits>"
            b"<architecture>arm64</architecture></processor></processors></description>"
            b"<resourceConf><MinPort>43001</MinPort><MaxPort>43002</MaxPort></resourceConf>"
            b"</nioResource></newResource>")
    req = parse_resources(body)
    assert (req.name, req.cpus, req.resource_element) == ("w1", 3, "nioResource")
    assert req.adaptor == "es.bsc.compss.nio.master.NIOAdaptor"
    assert req.processors[0].architecture == "arm64"
    assert req.properties == (("MinPort", "43001"), ("MaxPort", "43002")) and req.port is None


@pytest.mark.timeout(10)
@pytest.mark.parametrize("body", [
    ADD_RESOURCES_PEER.replace(b"<name>127.0.0.2</name>", b"<name></name>"),
    ADD_RESOURCES_PEER.replace(b"<name>127.0.0.2</name>", b"<name>two words</name>"),
    ADD_RESOURCES_PEER.replace(b"<computingUnits>2</computingUnits>", b""),
    ADD_RESOURCES_PEER.replace(b"<computingUnits>2</computingUnits>", b"<computingUnits>-2</computingUnits>"),
    ADD_RESOURCES_PEER.replace(b"<computingUnits>2</computingUnits>", b"<computingUnits>two</computingUnits>"),
    ADD_RESOURCES_PEER.replace(b"<memorySize>8</memorySize>", b"<memorySize>lots</memorySize>"),
    ADD_RESOURCES_PEER.replace(b"<Name>Port</Name>", b""),
    b"<newResource></newResource>",
    b"<newResource><externalResource><name>a</name></externalResource></newResource>",  # no description
    REDUCE_RESOURCES.replace(b"<workerName>127.0.0.1</workerName>", b""),
    b"<reduceNode><workerName>a</workerName></reduceNode>",  # no resources
    LOST_NODE,  # a lostNode is not a resources request
    ADD_RESOURCES_PEER[:-3],
])
def test_bad_resources_requests_are_400(body):
    refused(parse_resources, body, 400)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("body", [
    b"<lostNode></lostNode>",
    b"<lostNode><workerName>  </workerName></lostNode>",
    b"<lostNode><workerName>a</workerName><workerName>b</workerName></lostNode>",
    b"<lostNode><workerName><x/></workerName></lostNode>",
    REDUCE_RESOURCES,
    LOST_NODE[:-2],
])
def test_bad_lost_node_is_400(body):
    refused(parse_lost_node, body, 400)


# ---------------------------------------------------------------------------- GET /COMPSs/resources


@pytest.mark.timeout(10)
def test_resources_json_shape():
    me = NodeResources("127.0.0.1", cpus=4, memory_size=16)
    peers = [NodeResources("127.0.0.2", cpus=2, gpus=1), NodeResources("edge-3", cpus=1, adaptor="x.Y",
                                                                       architecture="arm64")]
    doc = resources_json(me, peers, time_ms=1_700_000_000_123)
    assert json.loads(json.dumps(doc)) == doc
    assert set(doc) == {"time", "resources"} and doc["time"] == 1_700_000_000_123
    assert [r["name"] for r in doc["resources"]] == ["127.0.0.1", "127.0.0.2", "edge-3"]
    first, second, third = doc["resources"]
    assert first == {
        "name": "127.0.0.1",
        "adaptor": MASTER_ADAPTOR,
        "description": {
            "processors": [{"name": "MainProcessor", "architecture": "[unassigned]", "units": 4}],
            "memory_size": 16,
            "memory_type": "[unassigned]",
            "storage_size": -1,
            "storage_type": "[unassigned]",
            "storage_bandwidth": -1,
        },
    }
    assert second["adaptor"] == COMM_AGENT_WORKER
    assert second["description"]["processors"] == [
        {"name": "MainProcessor", "architecture": "[unassigned]", "units": 2},
        {"name": "gpu", "architecture": "[unassigned]", "units": 1},
    ]
    assert third["adaptor"] == "x.Y"
    assert third["description"]["processors"][0]["architecture"] == "arm64"


@pytest.mark.timeout(10)
def test_resources_json_defaults():
    doc = resources_json(NodeResources("solo", cpus=0, memory_size=1.5))
    assert isinstance(doc["time"], int) and doc["time"] > 1_600_000_000_000
    (only,) = doc["resources"]
    assert only["description"]["processors"] == []
    assert only["description"]["memory_size"] == 1.5
