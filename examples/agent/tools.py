"""Example tools for `llmctl agent --tools examples/agent/tools.py`.

Every public function here is loaded into the agent's Python interpreter and shown to the
model as a stub (signature + docstring), so the model can call it from its code.
"""
import math


def derivative(f, x, h=1e-5):
    """Numerical derivative of f at x by central difference: (f(x + h) - f(x - h)) / (2h).

    Example: derivative(lambda t: t * math.log(t), math.pi)
    """
    return (f(x + h) - f(x - h)) / (2 * h)


def integrate(f, a, b, n=1000):
    """Definite integral of f from a to b by Simpson's rule with n (even) intervals."""
    if n % 2:
        n += 1
    h = (b - a) / n
    s = f(a) + f(b)
    s += 4 * sum(f(a + i * h) for i in range(1, n, 2))
    s += 2 * sum(f(a + i * h) for i in range(2, n, 2))
    return s * h / 3
