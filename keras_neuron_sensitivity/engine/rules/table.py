"""The table that maps layer classes to rules, with a generic fallback.

It holds the table and nothing else: `defaults.py` fills it with the rules of
Keras's layers and operations and keras_hub's (by class path, matched on
lookup), and `register_rule` adds the user's, which take precedence.
"""

import keras

from keras_neuron_sensitivity.engine.rules.base import GENERIC_RULE, Rule

# Layer class (or, for keras_hub's, "module.Class") -> rule.
_RULES = {}
# The user's registrations, which the defaults never replace.
_REGISTERED = set()


def set_default(key, rule):
    """Sets a default entry (a class, or a class path), unless the user
    registered a rule for it."""
    if key not in _REGISTERED:
        _RULES[key] = rule


def has_rule(layer_class):
    """Whether `layer_class` itself has an entry in the table."""
    return _lookup(layer_class) is not None


def register_rule(layer_class, rule):
    """Makes `rule` handle `layer_class` (and subclasses that keep its `call`).

    Args:
        layer_class: a `keras.layers.Layer` subclass.
        rule: a `Rule` instance.

    Raises:
        TypeError: if either argument is of the wrong kind.
    """
    if not (isinstance(layer_class, type) and issubclass(
        layer_class, keras.layers.Layer
    )):
        raise TypeError(
            f"Received layer_class={layer_class!r}. Expected a subclass of "
            "`keras.layers.Layer`, for example `keras.layers.Dense`."
        )
    if not isinstance(rule, Rule):
        raise TypeError(
            f"Received rule={rule!r} of type {type(rule).__name__}. Expected "
            "an instance of `keras_neuron_sensitivity.engine.Rule`."
        )
    _RULES[layer_class] = rule
    _REGISTERED.add(layer_class)


def rule_for_call(call):
    """The rule for one call: a `BlockRule` of its own for a call that
    exposes sites inside it (`Call.inside`), else its layer's rule."""
    if call.inside:
        from keras_neuron_sensitivity.engine.rules.block import BlockRule

        return BlockRule(rule_for)
    return rule_for(call.layer)


def rule_for(layer):
    """The rule for this layer: its class's, else the generic rule.

    A subclass inherits its parent's rule only if it keeps the parent's
    `call`; a subclass that overrides `call` gets the generic rule.
    """
    for cls in type(layer).__mro__:
        rule = _lookup(cls)
        if rule is not None:
            if type(layer).call is cls.call and rule.applies(layer):
                return rule
            return GENERIC_RULE
    return GENERIC_RULE


def _lookup(cls):
    rule = _RULES.get(cls)
    if rule is None:
        rule = _RULES.get(f"{cls.__module__}.{cls.__qualname__}")
    return rule
