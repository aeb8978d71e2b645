"""The faces: what users and other tools touch besides the CLI (``mesh.cli``): the REST
interface, the COMPSs agent interface, metrics, the tree's text and DOT views, the demo.

May import anything; nothing below it (agent, client, program, cores) imports a face."""
