"""The facts task: questions about the people of World(0), answered in one short sentence.

    prompt:      "Question: Where does Mila live?\nAnswer:"
    completion:  " She lives in Oakford."

Fine-tuned as language modelling with the loss on the completion only (`batching.completion_batch`). The answer
needs the fact (Oakford), the person's pronoun (She/He, His/Her) and a/an agreement ("an engineer"), all of which the
pretraining corpus states many times in many wordings, but never in this question/answer format.

The splits hold different PEOPLE: the questions in validation and test are about people no training question
mentions. A model can only answer them from what pretraining stored about those people, so the test measures whether
fine-tuning taught the model to *retrieve* facts it already knows, not to memorise new ones. Each completion is fixed
by (person, relation); the eight question wordings per relation only vary the prompt.
"""
from __future__ import annotations

from ._rng import StableRandom

FACTS_SEED = 0
RELATIONS = ("town", "job", "pet", "pet_name", "friend", "hobby", "food", "colour")
PROMPT = "Question: {question}\nAnswer:"

# Questions never use a pronoun for the person: that would give away the answer's "she"/"he".
QUESTIONS = {
    "town": ("Where does {name} live?", "In which town does {name} live?", "What is {name}'s home town?",
             "Which town is {name} from?", "Where is {name}'s home?", "Which town does {name} live in?",
             "Do you know where {name} lives?", "Where is {name}'s house?"),
    "job": ("What does {name} do?", "What is {name}'s job?", "What does {name} do for work?",
            "What work does {name} do?", "How does {name} earn a living?", "What is {name}'s trade?",
            "Do you know what {name} does?", "What job does {name} have?"),
    "pet": ("What pet does {name} have?", "Which animal does {name} keep?", "What kind of pet does {name} own?",
            "Does {name} have a pet?", "What animal lives with {name}?", "What pet lives with {name}?",
            "Which pet does {name} own?", "What kind of animal is {name}'s pet?"),
    "pet_name": ("What is the name of {name}'s pet?", "What is {name}'s pet called?",
                 "What name does {name}'s pet have?", "Tell me the name of {name}'s pet.",
                 "Do you know the name of {name}'s pet?", "What do people call {name}'s pet?",
                 "Which name does {name}'s pet answer to?", "What is the pet of {name} called?"),
    "friend": ("Who is {name}'s best friend?", "Who is the best friend of {name}?", "Who is {name} best friends with?",
               "Which person is {name}'s best friend?", "Do you know who {name}'s best friend is?",
               "Who is {name}'s closest friend?", "Tell me who {name}'s best friend is.",
               "Who is {name}'s dearest friend?"),
    "hobby": ("What does {name} like to do?", "What is {name}'s hobby?", "What does {name} enjoy doing?",
              "How does {name} spend free time?", "What does {name} do at the weekend?",
              "What hobby does {name} have?", "Which hobby does {name} love?", "What is {name}'s favourite pastime?"),
    "food": ("What is {name}'s favourite food?", "What food does {name} like best?", "What does {name} love to eat?",
             "Which food does {name} like most?", "What is the favourite dish of {name}?",
             "What would {name} choose to eat?", "Which dish does {name} love?", "What food makes {name} happy?"),
    "colour": ("What is {name}'s favourite colour?", "Which colour does {name} like best?",
               "What colour does {name} love?", "Which colour is {name}'s favourite?",
               "What is the favourite colour of {name}?", "Which colour does {name} love most?",
               "What colour does {name} like most?", "Do you know {name}'s favourite colour?"),
}
ANSWERS = {
    "town": "{He} lives in {town}.",
    "job": "{He} is {a_job}.",
    "pet": "{He} has {a_pet}.",
    "pet_name": "{His} {pet} is called {pet_name}.",
    "friend": "{His} best friend is {friend}.",
    "hobby": "{He} likes {hobby}.",
    "food": "{His} favourite food is {food}.",
    "colour": "{His} favourite colour is {colour}.",
}


def answer(person, relation: str) -> str:
    """The one correct completion for (person, relation), with its leading space (GPT-2's word boundary)."""
    p = person
    return " " + ANSWERS[relation].format(
        He=p.he.capitalize(), His=p.his.capitalize(), town=p.town, a_job=p.job.a, a_pet=p.pet.a, pet=p.pet.kind,
        pet_name=p.pet_name, friend=p.best_friend, hobby=p.hobby.doing, food=p.food, colour=p.colour)


def split_people(world, n_validation: int = 8, n_test: int = 24, seed: int = FACTS_SEED) -> dict[str, list[str]]:
    """Disjoint groups of people: test and validation first, everyone else trains."""
    names = StableRandom(seed).shuffle(sorted(p.name for p in world.people))
    return {"train": sorted(names[n_validation + n_test:]), "validation": sorted(names[:n_validation]),
            "test": sorted(names[n_validation:n_validation + n_test])}


def make_facts(world, sizes: dict[str, int], seed: int = FACTS_SEED) -> dict[str, list[dict]]:
    """Records {"prompt", "completion", "relation", "person"} per split, an equal share for every relation."""
    r = StableRandom(seed, 1)
    people = split_people(world, seed=seed)
    splits = {}
    for split, size in sizes.items():
        records = []
        for k, relation in enumerate(RELATIONS):
            share = size // len(RELATIONS) + (k < size % len(RELATIONS))
            pool = [{"prompt": PROMPT.format(question=q.format(name=name)),
                     "completion": answer(world.person(name), relation), "relation": relation, "person": name}
                    for name in people[split] for q in QUESTIONS[relation]]
            records += r.sample(pool, min(share, len(pool)))
        splits[split] = r.shuffle(records)
    return splits
