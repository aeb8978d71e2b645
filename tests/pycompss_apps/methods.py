"""Class methods as tasks, with INOUT self (PyCOMPSs' default) and a read-only method
(target_direction=IN): python methods.py"""

import json

from pycompss.api.api import compss_wait_on
from pycompss.api.parameter import IN
from pycompss.api.task import task


class Account:
    def __init__(self, owner):
        self.owner = owner
        self.balance = 0
        self.history = []

    @task()
    def deposit(self, amount):
        self.balance += amount
        self.history.append(amount)

    @task(returns=1)
    def withdraw(self, amount):
        self.balance -= amount
        self.history.append(-amount)
        return self.balance

    @task(returns=1, target_direction=IN)
    def report(self):
        self.balance = -999  # (self is IN: the change is not kept)
        return f"{self.owner}:{len(self.history)}"


def main():
    a, b = Account("a"), Account("b")
    for amount in (10, 20, 30):
        a.deposit(amount)
        b.deposit(amount * 2)
    left = a.withdraw(15)
    seen = a.report()
    a = compss_wait_on(a)
    b = compss_wait_on(b)
    print("RESULT", json.dumps({"a": [a.balance, a.history], "b": [b.balance, b.history],
                                "left": compss_wait_on(left), "seen": compss_wait_on(seen)}))


if __name__ == "__main__":
    main()
