"""The document writers: profiles, cards, town guides, lists, dialogues, letters, diaries, stories and opinions.

Each writer takes the world and a seeded `StableRandom` and returns one document. Writers only read facts from the
world, never invent them, so every document agrees with every other. Variety comes from many templates per fact, from
the order facts are told in, and from names versus pronouns, so that a model has to learn the facts themselves (and
"she"/"he", "a"/"an", "is"/"are") rather than one fixed sentence.

Template fields (filled by `_fields`): {S}/{s} the subject at/after the start of a sentence ("Mila" or "She"/"she"),
{Poss}/{poss} its possessive ("Mila's" or "Her"/"her"), {him}, and the facts {town} {a_job} {workplace} {duty_s}
{a_pet} {pet} {pet_name} {friend} {hobby} {food} {colour} {age} {surname} {full} {sib} {sibrel} {region}.
"""
from __future__ import annotations

from . import lexicon as lx
from ._rng import StableRandom
from .sentiment import opinion_sentence

FACTS_3RD = {
    "town": ("{S} lives in {town}.", "{S} has a house in {town}.", "{Poss} home is in {town}.",
             "{S} lives in the town of {town}.", "{town} is where {s} lives.", "{S} comes from {town}.",
             "{Poss} house is in {town}, in the {region}."),
    "job": ("{S} is {a_job}.", "{S} works as {a_job}.", "{S} works at the {workplace} in {town}.",
            "{S} is {a_job} at the {workplace}.", "{Poss} job is to {duty}.", "By trade, {s} is {a_job}.",
            "{S} is {a_job}, so every day {s} goes to the {workplace}.", "Every day, {s} {duty_s}."),
    "pet": ("{S} has {a_pet} called {pet_name}.", "{S} has {a_pet} named {pet_name}.",
            "{Poss} {pet} is called {pet_name}.", "{pet_name} is {poss} {pet}.",
            "{S} owns {a_pet}. Its name is {pet_name}.", "{S} lives with {a_pet} called {pet_name}.",
            "{S} keeps {a_pet}, {pet_name}, at home."),
    "friend": ("{Poss} best friend is {friend}.", "{S} and {friend} are best friends.",
               "{friend} is {poss} best friend.", "{S} is best friends with {friend}.",
               "{S} sees {poss} best friend {friend} every week."),
    "hobby": ("{S} likes {hobby}.", "{S} loves {hobby}.", "{Poss} hobby is {hobby}.",
              "{S} enjoys {hobby} in {his} free time.", "At the weekend, {s} likes {hobby}."),
    "food": ("{Poss} favourite food is {food}.", "{S} likes {food} more than any other food.",
             "{S} loves to eat {food}.", "The food {s} likes best is {food}."),
    "colour": ("{Poss} favourite colour is {colour}.", "{S} likes the colour {colour} best.",
               "{S} loves the colour {colour}."),
    "age": ("{S} is {age} years old.", "{S} is {age}."),
    "surname": ("{Poss} family name is {surname}.", "{Poss} full name is {full}."),
    "sibling": ("{S} has a {sibrel} called {sib}.", "{sib} is {poss} {sibrel}.", "{Poss} {sibrel} is {sib}."),
}
FACTS_1ST = {
    "town": ("I live in {town}.", "My home is in {town}.", "I have a house in {town}."),
    "job": ("I am {a_job}.", "I work as {a_job}.", "I work at the {workplace} in {town}."),
    "pet": ("I have {a_pet} called {pet_name}.", "My {pet} is called {pet_name}."),
    "friend": ("My best friend is {friend}.",),
    "hobby": ("I like {hobby}.", "In my free time I enjoy {hobby}."),
    "food": ("My favourite food is {food}.", "I love {food}."),
    "colour": ("My favourite colour is {colour}.",),
    "age": ("I am {age} years old.",),
    "surname": ("My full name is {full}.",),
    "sibling": ("I have a {sibrel} called {sib}.",),
}
QUESTIONS_2ND = {
    "town": ("Where do you live?", "Which town are you from?"),
    "job": ("What do you do?", "What is your job?"),
    "pet": ("Do you have a pet?", "Have you got a pet?"),
    "friend": ("Who is your best friend?",),
    "hobby": ("What do you like to do in your free time?", "What is your hobby?"),
    "food": ("What is your favourite food?",),
    "colour": ("What is your favourite colour?",),
    "age": ("How old are you?",),
}
PERSON_RELATIONS = ("town", "job", "pet", "friend", "hobby", "food", "colour", "age", "surname")
TIMES = ("One morning", "One evening", "Last week", "Yesterday", "One day", "On Monday", "On Saturday",
         "One sunny afternoon", "Early one morning", "On Sunday")


def _names(names) -> str:
    """"A", "A and B", "A, B and C"."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _a(noun: str) -> str:
    """"a park" / "an animal clinic"."""
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _fields(w, p, pronoun: bool = False, r: StableRandom | None = None) -> dict:
    """Everything a template can ask for, about person p, referred to by name or by pronoun."""
    sib = (r.choice(p.siblings) if r else p.siblings[0]) if p.siblings else ""
    return dict(
        S=p.he.capitalize() if pronoun else p.name, s=p.he if pronoun else p.name,
        Poss=p.his.capitalize() if pronoun else p.name + "'s", poss=p.his if pronoun else p.name + "'s",
        him=p.him, his=p.his, name=p.name, town=p.town, region=w.town(p.town).region, job=p.job.name, a_job=p.job.a,
        workplace=p.job.workplace, duty=p.job.duty, duty_s=p.job.duty_s, pet=p.pet.kind, a_pet=p.pet.a,
        pet_name=p.pet_name, friend=p.best_friend, hobby=p.hobby.doing, food=p.food, colour=p.colour, age=p.age,
        surname=p.surname, full=p.full_name, sib=sib,
        sibrel=("sister" if w.person(sib).female else "brother") if sib else "")


def fact(w, p, relation: str, r: StableRandom, pronoun: bool = False, first_person: bool = False) -> str:
    """One sentence stating one fact about p, in a randomly chosen wording."""
    table = FACTS_1ST if first_person else FACTS_3RD
    return r.choice(table[relation]).format(**_fields(w, p, pronoun, r))


def _relations(p) -> list[str]:
    return list(PERSON_RELATIONS) + (["sibling"] if p.siblings else [])


# ---- descriptions ------------------------------------------------------------------------------------------------
def profile(w, r):
    """A paragraph about one person: most of their facts, in a random order, by name and by pronoun."""
    p = r.choice(w.people)
    opening = r.choice(("This is {full}.", "Let me tell you about {name}.", "Meet {name}.", "About {name}\n",
                        "{full}\n", "Here is what I know about {name}.")).format(**_fields(w, p))
    rels = r.sample(_relations(p), r.randint(4, len(_relations(p))))
    sep = "" if opening.endswith("\n") else " "
    return opening + sep + " ".join(fact(w, p, rel, r, pronoun=k > 0 and r.chance(0.6)) for k, rel in enumerate(rels))


def card(w, r):
    """A record card: one field per line."""
    p = r.choice(w.people)
    f = _fields(w, p)
    rows = [("Name", p.full_name), ("Age", str(p.age)), ("Home town", p.town), ("Job", p.job.name),
            ("Pet", f"{p.pet.a} called {p.pet_name}"), ("Best friend", p.best_friend), ("Hobby", p.hobby.doing),
            ("Favourite food", p.food), ("Favourite colour", p.colour)]
    if p.siblings:
        rows.append(("Siblings", _names(p.siblings)))
    head, rest = rows[0], rows[1:]
    rows = [head] + r.sample(rest, r.randint(4, len(rest)))
    title = r.choice(("Person card", "Who is who", f"Card: {f['name']}"))
    return title + "\n" + "\n".join(f"{k}: {v}" for k, v in rows)


def pair(w, r):
    """Two best friends or two siblings, side by side; what they share is said so."""
    p = r.choice(w.people)
    q = w.person(r.choice(p.siblings)) if p.siblings and r.chance(0.4) else w.person(p.best_friend)
    rel = "best friends" if q.name == p.best_friend else ("sisters" if p.female and q.female else
                                                          "brothers" if not (p.female or q.female) else
                                                          "brother and sister")
    out = [f"{p.name} and {q.name} are {rel}."]
    for relation in r.sample(["town", "job", "pet", "hobby", "food"], 3):
        same = w.facts(p.name)[relation] == w.facts(q.name)[relation]
        if same and relation == "town":
            out.append(f"They both live in {p.town}.")
        elif same and relation == "hobby":
            out.append(f"They both love {p.hobby.doing}.")
        else:
            out.append(fact(w, p, relation, r))
            out.append(fact(w, q, relation, r))
    if rel == "best friends" and p.town != q.town:
        out.append(f"When {p.name} visits {q.name}, {p.he} takes the train from {p.town} to {q.town}.")
    return " ".join(out)


def town_guide(w, r):
    """A town: where it lies, its landmark and places, its railway, and some of the people who live there."""
    t = r.choice(w.towns)
    people = w.residents(t.name)
    n1, n2 = w.neighbours(t.name)
    places = [p for p in t.places if p not in ("shop",)]
    out = [f"{t.name} is {_a(t.size)} town in the {t.region}. It lies {t.feature.where}.",
           r.choice((f"In the middle of {t.name} there is {t.landmark}.", f"{t.name} is famous for {t.landmark}.",
                     f"Visitors come to {t.name} to see {t.landmark}.")),
           f"{t.name} has {_names(_a(x) for x in r.sample(places, min(5, len(places))))}.",
           f"The cafe in {t.name} is called {t.cafe}, and people say its {t.dish} is the best in the {t.region}.",
           f"From the station, trains go to {n1} ({w.minutes(t.name, n1)} minutes) and to {n2}"
           f" ({w.minutes(t.name, n2)} minutes)."]
    if people:
        shown = r.sample(people, min(len(people), r.randint(2, 5)))
        out.append(f"People who live in {t.name} include {_names(p.name for p in shown)}.")
        out += [r.choice(("{name} is {a_job} there.", "{name} works at the {workplace}."))
                .format(**_fields(w, p)) for p in shown[:3]]
    else:
        out.append(f"Nobody from our stories lives in {t.name}.")
    return " ".join(out)


def listing(w, r):
    """A list or table: residents of a town, people with one job, pets and owners, best friends, favourite foods."""
    kind = r.choice(("residents", "job", "pets", "friends", "foods", "table"))
    people = r.sample(w.people, r.randint(4, 8))
    if kind == "residents":
        t = r.choice(w.towns)
        names = [p.name for p in w.residents(t.name)]
        return f"People who live in {t.name}:\n" + ("\n".join(f"- {n}" for n in names) or "- nobody")
    if kind == "job":
        job = r.choice(lx.JOBS)
        rows = [f"- {p.name}, in {p.town}" for p in w.workers(job.name)]
        return f"All the {job.many} we know:\n" + ("\n".join(rows) if rows else f"- none: nobody is {job.a}")
    if kind == "pets":
        return "Pets and their owners:\n" + "\n".join(f"- {p.pet_name} is {p.name}'s {p.pet.kind}." for p in people)
    if kind == "friends":
        shown = sorted({tuple(sorted((p.name, p.best_friend))) for p in people})
        return "Best friends:\n" + "\n".join(f"- {a} and {b}" for a, b in shown)
    if kind == "foods":
        return "Favourite foods:\n" + "\n".join(f"{p.name}: {p.food}" for p in people)
    rows = [f"{p.name} | {p.town} | {p.job.name} | {p.pet.kind}" for p in people]
    return "Name | Town | Job | Pet\n" + "\n".join(rows)


# ---- dialogues and letters ---------------------------------------------------------------------------------------
def _answer(w, p, relation, r):
    """A first-person answer to a question from QUESTIONS_2ND."""
    if relation == "pet":
        return r.choice(("Yes, ", "Yes! ", "I do. ")) + fact(w, p, "pet", r, first_person=True)
    return fact(w, p, relation, r, first_person=True)


def _strangers(w, r):
    """Two people who are neither best friends nor siblings (so they may ask each other's names)."""
    while True:
        a, b = r.sample(w.people, 2)
        if a.best_friend != b.name and b.name not in a.siblings:
            return a, b


def dialogue_meet(w, r):
    """Two strangers meet and ask each other about themselves; what they share is noticed."""
    a, b = _strangers(w, r)
    lines = [f"{a.name}: Hello! My name is {a.name}. What is your name?",
             f"{b.name}: " + r.choice(("Hi, I am {n}.", "I am {n}. Nice to meet you.", "My name is {n}."))
             .format(n=b.name)]
    for relation in r.sample(list(QUESTIONS_2ND), r.randint(2, 4)):
        lines.append(f"{a.name}: {r.choice(QUESTIONS_2ND[relation])}")
        lines.append(f"{b.name}: {_answer(w, b, relation, r)} And you?")
        same = relation in ("town", "job", "hobby", "food", "colour") and \
            w.facts(a.name)[relation] == w.facts(b.name)[relation]
        lines.append(f"{a.name}: {_answer(w, a, relation, r)}" + (" The same as you!" if same else ""))
    lines.append(f"{b.name}: " + r.choice(("It was nice to meet you.", "See you soon!", "Goodbye!")))
    return "\n".join(lines)


def _yes_no(w, c, r) -> list[str]:
    """A yes/no question about c and a true answer: half the time the guess is wrong and the answer corrects it."""
    relation = r.choice(("town", "job", "pet"))
    right = r.chance(0.5)
    f = _fields(w, c, pronoun=True)
    if relation == "town":
        guess = c.town if right else r.choice([t.name for t in w.towns if t.name != c.town])
        q = f"Does {c.name} live in {guess}?"
        a = f"Yes, {c.he} does." if right else f"No, {c.he} does not. {c.he.capitalize()} lives in {c.town}."
    elif relation == "job":
        guess = c.job if right else r.choice([j for j in lx.JOBS if j != c.job])
        q = f"Is {c.name} {guess.a}?"
        a = f"Yes, {c.he} is." if right else f"No, {c.he} is not. {c.he.capitalize()} is {c.job.a}."
    else:
        guess = c.pet if right else r.choice([p for p in lx.PETS if p != c.pet])
        q = f"Does {c.name} have {guess.a}?"
        a = (f"Yes, {c.he} does. It is called {c.pet_name}." if right else
             "No, {s} does not. {S} has {a_pet} called {pet_name}.".format(**f))
    return [q, a]


def dialogue_gossip(w, r):
    """Two people talk about a third: yes/no questions (with corrections) and wh-questions."""
    a, b, c = r.sample(w.people, 3)
    lines = [(a, f"Do you know {c.name}?"),
             (b, r.choice(("Yes, I know {n}. ", "Of course. ", "Yes. ")).format(n=c.name) +
              fact(w, c, r.choice(("town", "job")), r, pronoun=True))]
    for _ in range(r.randint(1, 3)):
        q, ans = _yes_no(w, c, r)
        lines += [(a, q), (b, ans)]
    wh = r.choice((("Where does {name} work?", "{S} works at the {workplace} in {town}."),
                   ("Who is {name}'s best friend?", "{Poss} best friend is {friend}."),
                   ("What does {name} like to do?", "{S} likes {hobby}."),
                   ("What is {name}'s favourite food?", "{Poss} favourite food is {food}.")))
    f = _fields(w, c, pronoun=True)
    lines += [(a, wh[0].format(**f)), (b, wh[1].format(**f))]
    return "\n".join(f"{p.name}: {text}" for p, text in lines)


def quoted_talk(w, r):
    """A short scene with quoted speech: someone asks a stranger about their work and pet."""
    a, b = _strangers(w, r)
    fb = _fields(w, b)
    return " ".join([
        f"{a.name} met {b.name} at the station in {b.town}.",
        f"\"What do you do, {b.name}?\" asked {a.name}.",
        f"\"I am {b.job.a},\" said {b.name}. \"I work at the {b.job.workplace}.\"",
        f"\"Do you have any pets?\" asked {a.name}.",
        "\"Yes, I have {a_pet}. {Pet_name} is very clever,\" said {name} with a smile.".format(
            **fb, Pet_name=b.pet_name),
        r.choice((f"\"I have {a.pet.a} called {a.pet_name},\" said {a.name}.",
                  f"\"My best friend {a.best_friend} has {w.person(a.best_friend).pet.a},\" said {a.name}."))])


def letter(w, r):
    """A letter to the best friend: first-person news that agrees with the writer's facts and the reader's."""
    p = r.choice(w.people)
    q = w.person(p.best_friend)
    body = [fact(w, p, rel, r, first_person=True) for rel in r.sample(["job", "pet", "hobby", "food"], 2)]
    news = r.choice((f"{p.pet_name} is well and sends you a hello.",
                     f"Work at the {p.job.workplace} is busy this week.",
                     f"The weather in {p.town} is lovely, and I spend every evening {p.hobby.doing}."))
    asks = r.choice((f"How is {q.pet_name}? Does your {q.pet.kind} still love {q.pet.food}?",
                     f"Are you still working at the {q.job.workplace} in {q.town}?",
                     f"Please come to {p.town} soon. I will make {q.food} for you, because I know you love it."))
    return (f"Dear {q.name},\n\n" + r.choice(("I hope you are well. ", "Thank you for your letter. ", ""))
            + " ".join(body) + f" {news} {asks}\n\n" + r.choice(("Love", "Best wishes", "Your friend"))
            + f",\n{p.name}")


def diary(w, r):
    """A diary entry in the first person: a day at work, the pet, the hobby, the friend."""
    p = r.choice(w.people)
    day = r.choice(lx.DAYS)
    out = [f"From the diary of {p.full_name}\n\n{day}.",
           f"Today I went to the {p.job.workplace}, as always. I {p.job.duty} there.",
           r.choice((f"After work I fed {p.pet_name} some {p.pet.food}.",
                     f"When I came home, {p.pet_name} {p.pet.greets}.")),
           r.choice((f"In the evening I spent an hour {p.hobby.doing}.",
                     f"{p.best_friend} called me, and we talked for an hour.",
                     f"For dinner I made {p.food}. It is still my favourite food."))]
    return " ".join(out)


# ---- stories: simple causes and effects, always consistent with the facts ---------------------------------------
def story_visit(w, r):
    """Visiting the best friend: walking if they share a town, the train (and any change) if not; a fitting gift."""
    p = r.choice(w.people)
    q = w.person(p.best_friend)
    out = [f"{r.choice(TIMES)}, {p.name} wanted to visit {p.his} best friend {q.name}."]
    if q.town == p.town:
        out.append(f"{q.name} also lives in {p.town}, so {p.name} walked to {q.his} house.")
    else:
        route = w.route(p.town, q.town)
        out.append(f"{q.name} lives in {q.town}, so {p.name} took the train from {p.town}.")
        if len(route) > 2:
            out.append(f"The train went through {_names(route[1:-1])}, and then it reached {q.town}.")
        else:
            out.append(f"The journey took {w.minutes(p.town, q.town)} minutes.")
    out.append(f"{p.he.capitalize()} brought some {q.food}, because it is {q.name}'s favourite food.")
    out.append(f"When {p.name} knocked on the door, {q.pet_name} the {q.pet.kind} {q.pet.greets}.")
    if p.hobby == q.hobby:
        out.append(f"They both love {p.hobby.doing}, so they spent the afternoon {p.hobby.doing} together.")
    else:
        out.append(f"They drank tea, and {q.name} talked about {q.his} work at the {q.job.workplace}.")
    out.append(r.choice((f"In the evening {p.name} went home to {p.town}.", f"{p.name} was tired but happy.")))
    return " ".join(out)


def story_hungry(w, r):
    """Hunger leads to the cafe of the home town, where the cook (if there is one) serves the favourite food."""
    p = r.choice(w.people)
    t = w.town(p.town)
    cooks = [c for c in w.workers("cook", t.name) if c.name != p.name]
    out = [f"{r.choice(TIMES)}, {p.name} was very hungry, and there was no food at home.",
           f"So {p.he} went to {t.cafe}, the cafe in {t.name}."]
    if cooks:
        out.append(f"The cook, {cooks[0].name}, said hello, because {cooks[0].he} knows {p.name} well.")
    out.append(f"{p.name} ordered {p.food}, because it is {p.his} favourite food.")
    out.append(r.choice((f"It was {r.choice(lx.ADJECTIVES['food'][0])}, and {p.name} was not hungry any more.",
                         f"After the meal, {p.he} felt much better and walked home to {p.pet_name}.")))
    return " ".join(out)


def story_pet_ill(w, r):
    """A sick pet goes to a vet: the one in town if there is one, otherwise the nearest town that has one."""
    p = r.choice(w.people)
    out = [f"{r.choice(TIMES)}, {p.pet_name}, {p.name}'s {p.pet.kind}, did not want to eat {p.pet.food}.",
           f"{p.name} was worried, so {p.he} took {p.pet_name} to the vet."]
    vets = [v for v in w.workers("vet", p.town) if v.name != p.name]
    if p.job.name == "vet":
        out[1] = f"{p.name} is a vet, so {p.he} looked at {p.pet_name} {p.him}self at the animal clinic."
    elif vets:
        out.append(f"The vet in {p.town} is {vets[0].name}. {vets[0].name} looked at {p.pet_name} carefully.")
    else:
        elsewhere = [v for v in w.workers("vet") if v.name != p.name]
        if elsewhere:
            v = min(elsewhere, key=lambda v: len(w.route(p.town, v.town)))
            out.append(f"There is no vet in {p.town}, so they took the train to {v.town}, where {v.name} works.")
    out.append(f"The next day {p.pet_name} was well again and {p.pet.happy}. {p.name} was very happy.")
    return " ".join(out)


def story_lost(w, r):
    """A lost belonging is found where its owner left it."""
    p = r.choice(w.people)
    colour, obj = r.choice(p.belongings)
    out = [f"{r.choice(TIMES)}, {p.name} could not find {p.his} {colour} {obj}.",
           f"{p.he.capitalize()} looked under the bed and in the kitchen, but it was not there."]
    if p.pet.kind in ("dog", "cat") and r.chance(0.5):
        out.append(f"Then {p.he} saw {p.pet_name} in the garden. The {p.pet.kind} was sitting on the {obj}!")
    else:
        out.append(f"Then {p.he} remembered: {p.he} had left it at the {p.job.workplace}. "
                   f"The next morning {p.he} went to the {p.job.workplace} and found it.")
    out.append(r.choice((f"{p.name} was happy again.", f"{p.name} told {p.best_friend} the whole story.")))
    return " ".join(out)


def story_birthday(w, r):
    """A birthday: the age is the person's age; friends and siblings bring presents that fit the hobby."""
    p = r.choice(w.people)
    guests = [p.best_friend] + list(p.siblings)
    out = [f"It was {p.name}'s birthday, and {p.he} turned {p.age}.",
           f"{_names(guests)} came to {p.his} house in {p.town}."]
    out.append(f"{p.best_friend} gave {p.him} {p.hobby.gift}, because {p.name} loves {p.hobby.doing}.")
    if p.siblings:
        sib = w.person(p.siblings[0])
        out.append(f"{p.his.capitalize()} {'sister' if sib.female else 'brother'} {sib.name} brought "
                   f"{_a(p.colour)} scarf, because {p.colour} is {p.name}'s favourite colour.")
    out.append(f"They ate {p.food} and sang songs. Even {p.pet_name} the {p.pet.kind} joined the party.")
    return " ".join(out)


def story_weather(w, r):
    """The weather decides the day: rain and an umbrella (or none), sun and an outdoor hobby, wind and a kite."""
    p = r.choice(w.people)
    weather = r.choice(("rain", "sun", "wind"))
    if weather == "rain":
        umbrella = p.owns("umbrella")
        out = [f"{r.choice(TIMES)}, it was raining in {p.town}."]
        out.append(f"{p.name} took {p.his} {umbrella} umbrella and walked to the {p.job.workplace}, so {p.he} "
                   "stayed dry."
                   if umbrella else f"{p.name} has no umbrella, so {p.he} got wet on the way to the {p.job.workplace}.")
    elif weather == "sun":
        out = [f"{r.choice(TIMES)}, the sun was shining in {p.town}."]
        out.append(f"Because {p.name} loves {p.hobby.doing}, {p.he} spent the whole day outside." if p.hobby.outdoor
                   else f"But {p.name} likes {p.hobby.doing} best, so {p.he} stayed at home anyway.")
    else:
        kite = p.owns("kite")
        out = [f"{r.choice(TIMES)}, there was a strong wind in {p.town}."]
        out.append(f"So {p.name} flew {p.his} {kite} kite in the park." if kite
                   else f"{p.name} wanted to fly a kite, but {p.he} does not have one, so {p.he} watched the clouds.")
    out.append(r.choice((f"Later {p.he} told {p.best_friend} about it.", f"In the evening {p.he} fed {p.pet_name}.")))
    return " ".join(out)


def story_workday(w, r):
    """A working day: the workplace, the duty, colleagues in the same job and town."""
    p = r.choice(w.people)
    colleagues = [c.name for c in w.workers(p.job.name, p.town) if c.name != p.name]
    out = [f"{p.name} is {p.job.a} in {p.town}. Every morning {p.he} goes to the {p.job.workplace}.",
           f"There {p.he} {p.job.duty_s}."]
    if colleagues:
        out.append(f"{p.he.capitalize()} works with {_names(colleagues)}, who {'is' if len(colleagues) == 1 else 'are'}"
                   f" also {p.job.a if len(colleagues) == 1 else p.job.many}.")
    out.append(f"At noon {p.he} eats {p.food}. After work {p.he} goes home to {p.pet_name}, {p.his} {p.pet.kind}.")
    return " ".join(out)


def story_trip(w, r):
    """A day trip by train to see another town's landmark."""
    p = r.choice(w.people)
    t = r.choice([t for t in w.towns if t.name != p.town])
    route = w.route(p.town, t.name)
    sight = "the " + t.landmark.split(" ", 1)[1]               # "a windmill" -> "the windmill"
    out = [f"{p.name} wanted to see {sight} in {t.name}.",
           f"{p.he.capitalize()} took the train from {p.town}" +
           (f" and passed through {_names(route[1:-1])}." if len(route) > 2 else
            f". It took only {w.minutes(p.town, t.name)} minutes."),
           f"{t.name} lies {t.feature.where}, and {p.name} liked {sight} very much.",
           f"Before going home, {p.he} had some {t.dish} at {t.cafe}."]
    locals_ = [x.name for x in w.residents(t.name) if x.name != p.name]
    if p.best_friend in locals_:
        out.append(f"{p.his.capitalize()} best friend {p.best_friend} lives there, so they had tea together.")
    return " ".join(out)


def story_dinner(w, r):
    """Cooking for a guest means cooking the guest's favourite food."""
    p = r.choice(w.people)
    q = w.person(r.choice(p.siblings) if p.siblings and r.chance(0.4) else p.best_friend)
    return " ".join([f"{p.name} invited {q.name} for dinner.",
                     f"{p.name} cooked {q.food}, because it is {q.name}'s favourite food.",
                     f"{q.name} came from {q.town}" + (" by train." if q.town != p.town else " on foot."),
                     f"\"This is wonderful!\" said {q.name}. After dinner they talked about {q.hobby.doing}."])


def opinion(w, r):
    """Someone sees a film, reads a book, eats at a cafe or visits a place, and says what they thought."""
    p = r.choice(w.people)
    work = r.choice(w.works)
    t = w.town(p.town)
    if work.kind == "film":
        intro = f"{p.name} watched {work.title}, {work.genre}, at the cinema."
    else:
        author = "" if work.author == p.name else f" by {work.author}"
        intro = f"{p.name} read {work.title}, {work.genre}{author}."
    if r.chance(0.3):
        intro = f"{p.name} had the {t.dish} at {t.cafe} in {t.name}."
        domain, subject = "meal", f"the {t.dish}"
    else:
        domain, subject = work.kind, work.title
    said = opinion_sentence(r, domain, subject)
    return intro + " " + r.choice(("Afterwards {s} said: \"{o}\"", "{S} told {f}: \"{o}\"",
                                   "Later {s} wrote in {poss} diary: \"{o}\"")).format(
        s=p.he, S=p.he.capitalize(), f=p.best_friend, poss=p.his, o=said)


WRITERS = (
    (profile, 3.0), (card, 1.0), (pair, 2.0), (town_guide, 1.5), (listing, 1.5), (dialogue_meet, 1.5),
    (dialogue_gossip, 2.0), (quoted_talk, 1.0), (letter, 1.0), (diary, 1.0), (story_visit, 1.0),
    (story_hungry, 1.0), (story_pet_ill, 0.7), (story_lost, 0.7), (story_birthday, 0.7), (story_weather, 1.0),
    (story_workday, 1.0), (story_trip, 0.7), (story_dinner, 0.7), (opinion, 1.5),
)


def write_document(w, r: StableRandom) -> str:
    """One document: a writer picked by weight, then written with the same generator."""
    writer = r.weighted([f for f, _ in WRITERS], [wt for _, wt in WRITERS])
    return writer(w, r)
