"""The COMPSs agent interface: COMPSs' REST requests parsed from the bytes COMPSs sends
(``xmlbodies``), the request records (``requests``) and the JSON answers (``answers``)."""
