"""Shared request bodies and builders for the COMPSs format tests (``tests/test_compss*.py``).

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

import pytest

from mesh.faces.compss.answers import CompssRequestError

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
