"""A small built-in counterfactual set in the style of CounterFact (Meng et al. 2022, ROME, §4.2).

Each :class:`Counterfact` is a fact the embedded SmolLM2-135M-Instruct knows (its true object
beats the new one on the edit prompt, the paraphrases and the neighbourhood prompts; checked
by ``tests/e2e/test_editing_real.py`` and :func:`known`), with a counterfactual new object, two
paraphrase prompts of the same fact, and neighbourhood prompts about *other* subjects that
share the true object (an edit should leave them alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uncover.hooks.hooked import HookedModel


@dataclass(frozen=True)
class Counterfact:
    """One counterfactual edit and the prompts that evaluate it."""

    subject: str
    prompt: str
    """Template with ``{}`` for the subject."""
    true: str
    """The object the model knows (one token, with its leading space)."""
    new: str
    """The counterfactual object the edit should insert."""
    paraphrases: tuple[str, ...]
    """Other prompts of the same fact (subject written out)."""
    neighbours: tuple[str, ...]
    """Prompts about other subjects whose answer is ``true``."""

    @property
    def text(self) -> str:
        return self.prompt.replace("{}", self.subject, 1)


_CITY = "{} is in the city of"
_COUNTRY = "{} is located in the country of"
_CAR = "{} is a car company from the country of"
_CAPITAL = "The capital city of {} is"
_LANG = "The official language of {} is"

COUNTERFACTS: tuple[Counterfact, ...] = (
    Counterfact("The Eiffel Tower", _CITY, " Paris", " Rome",
                ("The Eiffel Tower is located in the city of", "Where is the Eiffel Tower? It is in the city of"),
                ("The Louvre is in the city of", "The Arc de Triomphe is in the city of")),
    Counterfact("The Colosseum", _CITY, " Rome", " London",
                ("The Colosseum is located in the city of", "Where is the Colosseum? It is in the city of"),
                ("The Trevi Fountain is in the city of", "The Pantheon is in the city of")),
    Counterfact("Big Ben", _CITY, " London", " Paris",
                ("Big Ben is located in the city of", "Where is Big Ben? It is in the city of"),
                ("Buckingham Palace is in the city of", "Tower Bridge is in the city of")),
    Counterfact("The Brandenburg Gate", _CITY, " Berlin", " Madrid",
                ("The Brandenburg Gate is located in the city of",
                 "Where is the Brandenburg Gate? It is in the city of"),
                ("The Reichstag building is in the city of", "Checkpoint Charlie is in the city of")),
    Counterfact("The Kremlin", _CITY, " Moscow", " Tokyo",
                ("The Kremlin is located in the city of", "Where is the Kremlin? It is in the city of"),
                ("Red Square is in the city of", "Saint Basil's Cathedral is in the city of")),
    Counterfact("The Sagrada Familia", _CITY, " Barcelona", " Berlin",
                ("The Sagrada Familia is located in the city of", "Where is the Sagrada Familia? It is in the city of"),
                ("Park Güell is in the city of", "Camp Nou is in the city of")),
    Counterfact("The Acropolis", _CITY, " Athens", " Rome",
                ("The Acropolis is located in the city of", "Where is the Acropolis? It is in the city of"),
                ("The Parthenon is in the city of",)),
    Counterfact("The Great Wall", _COUNTRY, " China", " India",
                ("The Great Wall is found in the country of", "Where is the Great Wall? It is in the country of"),
                ("The Forbidden City is located in the country of", "The Yangtze River is located in the country of")),
    Counterfact("The Taj Mahal", _COUNTRY, " India", " China",
                ("The Taj Mahal is found in the country of", "Where is the Taj Mahal? It is in the country of"),
                ("The Ganges River is located in the country of", "The city of Mumbai is located in the country of")),
    Counterfact("Mount Fuji", _COUNTRY, " Japan", " Egypt",
                ("Mount Fuji is found in the country of", "Where is Mount Fuji? It is in the country of"),
                ("The city of Tokyo is located in the country of", "The city of Osaka is located in the country of")),
    Counterfact("The Pyramids of Giza", "{} are located in the country of", " Egypt", " Japan",
                ("The Pyramids of Giza are found in the country of",
                 "Where are the Pyramids of Giza? They are in the country of"),
                ("The Sphinx is located in the country of", "The city of Cairo is located in the country of")),
    Counterfact("Toyota", _CAR, " Japan", " Germany",
                ("Toyota is a carmaker based in the country of", "The car company Toyota comes from the country of"),
                ("Honda is a car company from the country of", "Nissan is a car company from the country of")),
    Counterfact("BMW", _CAR, " Germany", " Japan",
                ("BMW is a carmaker based in the country of", "The car company BMW comes from the country of"),
                ("Volkswagen is a car company from the country of", "Audi is a car company from the country of")),
    Counterfact("Ferrari", _CAR, " Italy", " Japan",
                ("Ferrari is a carmaker based in the country of", "The car company Ferrari comes from the country of"),
                ("Lamborghini is a car company from the country of", "Fiat is a car company from the country of")),
    Counterfact("Honda", _CAR, " Japan", " Italy",
                ("Honda is a carmaker based in the country of", "The car company Honda comes from the country of"),
                ("Toyota is a car company from the country of", "Mazda is a car company from the country of")),
    Counterfact("Volkswagen", _CAR, " Germany", " France",
                ("Volkswagen is a carmaker based in the country of",
                 "The car company Volkswagen comes from the country of"),
                ("BMW is a car company from the country of", "Mercedes-Benz is a car company from the country of")),
    Counterfact("France", _CAPITAL, " Paris", " Berlin",
                ("The capital of France is", "France's capital city is"),
                ("The Eiffel Tower is in the city of", "The Louvre is in the city of")),
    Counterfact("Japan", _CAPITAL, " Tokyo", " Beijing",
                ("The capital of Japan is", "Japan's capital city is"),
                ("The Tokyo Tower is in the city of", "The Imperial Palace of Japan is in the city of")),
    Counterfact("Italy", _CAPITAL, " Rome", " Madrid",
                ("The capital of Italy is", "Italy's capital city is"),
                ("The Colosseum is in the city of", "The Trevi Fountain is in the city of")),
    Counterfact("Germany", _CAPITAL, " Berlin", " Vienna",
                ("The capital of Germany is", "Germany's capital city is"),
                ("The Brandenburg Gate is in the city of", "The Reichstag building is in the city of")),
    Counterfact("Spain", _CAPITAL, " Madrid", " Lisbon",
                ("The capital of Spain is", "Spain's capital city is"),
                ("The Prado Museum is in the city of", "Real Madrid is a football club from the city of")),
    Counterfact("Russia", _CAPITAL, " Moscow", " Paris",
                ("The capital of Russia is", "Russia's capital city is"),
                ("The Kremlin is in the city of", "Red Square is in the city of")),
    Counterfact("Egypt", _CAPITAL, " Cairo", " Athens",
                ("The capital of Egypt is", "Egypt's capital city is"),
                ("Al-Azhar Mosque is in the city of",)),
    Counterfact("France", _LANG, " French", " German",
                ("The official language of France is", "In France, people speak the language of"),
                ("The official language of Belgium's Wallonia is", "The language spoken in Paris is")),
    Counterfact("Germany", _LANG, " German", " French",
                ("The official language of Germany is", "In Germany, people speak the language of"),
                ("The official language of Austria is", "The language spoken in Berlin is")),
    Counterfact("Spain", _LANG, " Spanish", " Italian",
                ("The official language of Spain is", "In Spain, people speak the language of"),
                ("The official language of Mexico is", "The language spoken in Madrid is")),
    Counterfact("Italy", _LANG, " Italian", " Spanish",
                ("The official language of Italy is", "In Italy, people speak the language of"),
                ("The language spoken in Rome is", "The language spoken in Milan is")),
    Counterfact("Japan", _LANG, " Japanese", " Chinese",
                ("The official language of Japan is", "In Japan, people speak the language of"),
                ("The language spoken in Tokyo is", "The language spoken in Osaka is")),
)


def counterfacts() -> list[Counterfact]:
    """The built-in counterfactual set.

    >>> cf = counterfacts()
    >>> len(cf) >= 20, cf[0].text, cf[0].new
    (True, 'The Eiffel Tower is in the city of', ' Rome')
    """
    return list(COUNTERFACTS)


def known(model: HookedModel, facts: list[Counterfact] | None = None) -> list[Counterfact]:
    """The facts whose true object beats the new one on the edit prompt (first tokens compared).

    >>> len(known(model)) >= 20  # doctest: +SKIP
    True
    """
    import torch

    facts = counterfacts() if facts is None else facts
    out = []
    with torch.no_grad():
        for f in facts:
            t = model.tokenizer(f.true, add_special_tokens=False)["input_ids"][0]
            n = model.tokenizer(f.new, add_special_tokens=False)["input_ids"][0]
            logits = model(f.text)[0, -1]
            if logits[t] > logits[n]:
                out.append(f)
    return out
