"""Tools for the M3ToolEval-style tasks of tools/bench/agent_eval.py (loaded with
`llmctl agent --tools`). Each task needs one or more of them, chained."""
import base64
import math

_FACTORS = {  # to SI base units
    "m": 1.0, "km": 1000.0, "cm": 0.01, "mile": 1609.344, "ft": 0.3048, "inch": 0.0254,
    "kg": 1.0, "g": 0.001, "lb": 0.45359237, "oz": 0.028349523125,
    "l": 1.0, "ml": 0.001, "gallon": 3.785411784,
}


def convert_units(value, from_unit, to_unit):
    """Converts value between units of length (m, km, cm, mile, ft, inch), mass (kg, g, lb, oz)
    or volume (l, ml, gallon). Example: convert_units(1, "mile", "km") -> 1.609344"""
    return value * _FACTORS[from_unit] / _FACTORS[to_unit]


def fahrenheit_to_celsius(f):
    """Converts a temperature from degrees Fahrenheit to degrees Celsius."""
    return (f - 32) * 5 / 9


def decode_base64(text):
    """Decodes a base64 string into UTF-8 text."""
    return base64.b64decode(text).decode("utf-8")


def decode_hex(text):
    """Decodes a hex string (two digits per byte) into UTF-8 text."""
    return bytes.fromhex(text).decode("utf-8")


def caesar_shift(text, shift):
    """Shifts every letter of text forward by shift places in the alphabet (negative to decode)."""
    out = []
    for ch in text:
        if ch.isalpha():
            base = ord("A") if ch.isupper() else ord("a")
            out.append(chr((ord(ch) - base + shift) % 26 + base))
        else:
            out.append(ch)
    return "".join(out)


def reverse_text(text):
    """Returns text reversed."""
    return text[::-1]


def apply_discount(price, percent):
    """Price after a discount of percent %."""
    return price * (1 - percent / 100)


def add_tax(price, percent):
    """Price after adding percent % tax."""
    return price * (1 + percent / 100)


def derivative(f, x, h=1e-5):
    """Numerical derivative of f at x by central difference."""
    return (f(x + h) - f(x - h)) / (2 * h)


def count_vowels(text):
    """Number of vowels (a, e, i, o, u; any case) in text."""
    return sum(ch in "aeiouAEIOU" for ch in text)
