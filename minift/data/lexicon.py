"""The words the generated world is made of: names, towns, jobs, pets, hobbies, foods, and the review adjectives.

Plain tables, no logic. `world.py` draws a world from them with a seed; `documents.py` and `sentiment.py` write
sentences with them. Each entry carries the grammar it needs (the article "a"/"an", a third-person verb form, a
plural), so the writers never guess and the corpus stays grammatical.
"""
from __future__ import annotations

from dataclasses import dataclass

FEMALE_NAMES = (
    "Mila", "Anna", "Sara", "Lena", "Nora", "Ella", "Ava", "Ruby", "Lily", "Rosa", "Ida", "Maya", "Zoe", "Iris",
    "Clara", "Alice", "Emma", "Julia", "Hanna", "Lucy", "Grace", "Eva", "Mia", "Amy", "Kate", "Jane", "Molly",
    "Tessa", "Vera", "Hazel", "Nina", "Paula", "Greta", "Elsa", "Freya", "Dora", "Wendy", "Helen", "Fiona",
    "Bella", "Lara", "Tara", "Cora", "Edith", "Mabel", "June", "Agnes", "Irene", "Olga", "Sofia", "Leah", "Naomi",
)
MALE_NAMES = (
    "Tom", "Sam", "Ben", "Leo", "Jack", "Finn", "Noah", "Oscar", "Hugo", "Felix", "Theo", "Adam", "Luke", "Owen",
    "Ryan", "Paul", "Peter", "Mark", "Dan", "Joe", "Tim", "Alex", "Eric", "Ivan", "Omar", "Hans", "Karl", "Emil",
    "Otto", "Victor", "Simon", "Oliver", "Henry", "Arthur", "Frank", "George", "Harry", "Jonah", "Lewis", "Milo",
    "Nico", "Ralph", "Rufus", "Toby", "Walter", "Abel", "Carl", "Dennis", "Edwin", "Igor", "Jonas", "Kevin",
)
SURNAMES = (
    "Stone", "Hill", "Brook", "Wood", "Fletcher", "Marsh", "Reed", "Frost", "Hale", "Lane", "Moss", "Price", "Shaw",
    "Thorne", "Vale", "Wells", "Young", "Bell", "Cole", "Dale", "Fox", "Hart", "Hunt", "Kerr", "Lowe", "Mann",
    "Nash", "Page", "Rhodes", "Rowe", "Snow", "Swift", "Todd", "Ward", "Webb", "York", "Ames", "Blake", "Carr",
    "Dunn", "Ellis", "Ford", "Grant", "Hayes", "Kemp", "Lamb", "Moore", "Oakes", "Pike", "Sims", "Tate", "Voss",
)
TOWN_NAMES = (
    "Oakford", "Millbrook", "Stonebridge", "Riverton", "Elmwood", "Ashby", "Fairhaven", "Greenhill", "Larkfield",
    "Westmoor", "Brightwater", "Pinecrest", "Redcliff", "Hollowmere", "Sunbury", "Thornfield",
)
REGIONS = ("north", "south", "east", "west")
TOWN_SIZES = ("small", "quiet", "busy", "pretty", "old", "friendly")


@dataclass(frozen=True)
class Feature:
    """Where a town lies. `water` allows a harbour and fishers; `landmarks` are the sights that fit the place."""
    where: str                      # "by the sea": completes "It lies ..."
    water: bool
    landmarks: tuple[str, ...]


FEATURES = (
    Feature("by the sea", True, ("a white lighthouse", "a long sandy beach", "an old stone pier")),
    Feature("beside a lake", True, ("a wooden jetty", "a little island with a tower", "a boathouse")),
    Feature("next to a river", False, ("an old stone bridge", "a water mill", "a tall clock tower")),
    Feature("on a hill", False, ("a castle", "a windmill", "a tall clock tower")),
    Feature("in a green valley", False, ("a big fountain", "an old church", "a rose garden")),
    Feature("near a forest", False, ("a wooden tower", "a huge oak tree", "an old church")),
)

ALWAYS_PLACES = ("school", "park", "shop", "cafe", "station")
OPTIONAL_PLACES = ("bakery", "library", "hospital", "theatre", "cinema", "museum", "farm", "market", "workshop",
                   "studio", "animal clinic", "police station", "building site")
WATER_PLACES = ("harbour",)


@dataclass(frozen=True)
class Job:
    """An occupation: the noun, where it is done, and what it is ("to bake bread" / "bakes bread")."""
    name: str
    workplace: str
    duty: str                       # base form: "bake bread and cakes"
    duty_s: str                     # third person: "bakes bread and cakes"
    plural: str = ""

    @property
    def a(self) -> str:             # "a baker" / "an artist"
        return ("an " if self.name[0] in "aeiou" else "a ") + self.name

    @property
    def many(self) -> str:
        return self.plural or self.name + "s"


JOBS = (
    Job("baker", "bakery", "bake bread and cakes", "bakes bread and cakes"),
    Job("teacher", "school", "teach the children", "teaches the children"),
    Job("doctor", "hospital", "help people who are ill", "helps people who are ill"),
    Job("nurse", "hospital", "look after sick people", "looks after sick people"),
    Job("farmer", "farm", "grow wheat and feed the cows", "grows wheat and feeds the cows"),
    Job("fisher", "harbour", "catch fish in a small boat", "catches fish in a small boat"),
    Job("librarian", "library", "look after the books", "looks after the books", "librarians"),
    Job("cook", "cafe", "cook meals for the guests", "cooks meals for the guests"),
    Job("gardener", "park", "look after the flowers and trees", "looks after the flowers and trees"),
    Job("engineer", "workshop", "fix machines", "fixes machines"),
    Job("artist", "studio", "paint pictures", "paints pictures"),
    Job("actor", "theatre", "act in plays", "acts in plays"),
    Job("vet", "animal clinic", "look after sick animals", "looks after sick animals"),
    Job("driver", "station", "drive the bus", "drives the bus"),
    Job("builder", "building site", "build houses", "builds houses"),
    Job("shopkeeper", "shop", "sell food and soap", "sells food and soap"),
    Job("police officer", "police station", "keep the town safe", "keeps the town safe"),
    Job("guide", "museum", "show visitors the old treasures", "shows visitors the old treasures"),
)


@dataclass(frozen=True)
class Pet:
    """A kind of pet, what it eats, and what it does when someone comes to the door."""
    kind: str
    food: str
    greets: str                     # completes "{name} the dog ..."
    happy: str                      # completes "{name} ..." when all is well

    @property
    def a(self) -> str:
        return "a " + self.kind


PETS = (
    Pet("dog", "meat", "barked and wagged its tail", "ran around the garden"),
    Pet("cat", "fish", "came to the door and purred", "slept in the sun"),
    Pet("rabbit", "carrots", "hopped across the floor", "ate a carrot"),
    Pet("parrot", "seeds", "said hello in a loud voice", "sang a little song"),
    Pet("goldfish", "fish flakes", "swam round and round its bowl", "swam happily in its bowl"),
    Pet("hamster", "seeds", "ran in its wheel", "ran in its wheel all night"),
    Pet("tortoise", "lettuce", "slowly walked to the door", "ate some lettuce"),
    Pet("horse", "hay", "stood at the gate and waited", "ran across the field"),
)
PET_NAMES = (
    "Pip", "Biscuit", "Luna", "Coco", "Pepper", "Toffee", "Sunny", "Bubbles", "Ziggy", "Mango", "Nutmeg", "Pickle",
    "Button", "Maple", "Noodle", "Waffle", "Bean", "Socks", "Shadow", "Ginger", "Misty", "Rocky", "Duke", "Clover",
    "Pebble", "Whiskers", "Snowball", "Patch", "Bramble", "Fudge", "Honey", "Jasper", "Kiwi", "Lucky", "Muffin",
    "Nibbles", "Oreo", "Peanut", "Rusty", "Scout", "Tiger", "Willow", "Acorn", "Blue", "Cinnamon", "Dot", "Echo",
    "Flash", "Goose", "Hazelnut",
)


@dataclass(frozen=True)
class Hobby:
    """A pastime: the gerund phrase ("playing chess"), whether it is done outdoors, and a fitting present."""
    doing: str
    outdoor: bool
    gift: str


HOBBIES = (
    Hobby("painting", False, "a box of paints"),
    Hobby("swimming", True, "a new swimming cap"),
    Hobby("reading", False, "a thick book"),
    Hobby("playing chess", False, "a wooden chess set"),
    Hobby("singing", False, "a book of songs"),
    Hobby("running", True, "a pair of running shoes"),
    Hobby("fishing", True, "a new fishing rod"),
    Hobby("gardening", True, "a packet of flower seeds"),
    Hobby("dancing", False, "a pair of dancing shoes"),
    Hobby("cycling", True, "a bicycle bell"),
    Hobby("baking", False, "a cake tin"),
    Hobby("knitting", False, "a ball of soft wool"),
    Hobby("playing the piano", False, "a book of piano music"),
    Hobby("watching birds", True, "a pair of binoculars"),
    Hobby("taking photos", True, "a small camera"),
    Hobby("climbing hills", True, "a warm jacket"),
)
FOODS = (
    "apple pie", "fish soup", "pancakes", "cheese", "rice", "noodles", "chocolate cake", "tomato soup",
    "bread and honey", "strawberries", "pasta", "carrot cake", "plum jam", "potato salad", "pear tart", "bean stew",
)
COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "white", "black", "grey", "brown")
OBJECTS = ("bicycle", "umbrella", "kite", "scarf", "hat", "guitar", "lamp", "clock", "teapot", "bag", "notebook")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Titles for the films and books of the world, drawn as "The {adjective} {noun}".
TITLE_ADJECTIVES = ("Silver", "Hidden", "Last", "Little", "Golden", "Quiet", "Lost", "Broken", "Secret", "Long",
                    "Painted", "Winter", "Summer", "Sleeping", "Wild", "Empty")
TITLE_NOUNS = ("Kite", "Road", "Garden", "River", "Lantern", "Door", "Island", "Bridge", "Letter", "Horse",
               "Mountain", "Clock", "Harbour", "Window", "Forest", "Bell")
FILM_GENRES = ("a comedy", "a mystery", "a love story", "an adventure", "a cartoon", "a ghost story")
BOOK_GENRES = ("a novel", "a book of poems", "a detective story", "a history book", "a children's book",
               "a travel book")
CAFE_NOUNS = ("Door", "Lantern", "Teapot", "Kettle", "Table", "Window", "Spoon", "Chair")
DISHES = ("soup", "apple pie", "pancakes", "fish stew", "pasta", "chocolate cake", "bread", "salad", "coffee",
          "lemon tart", "omelette", "porridge")

# ---------------------------------------------------------------------------------------------------------------
# Review adjectives, by what they can describe. Each class has positive and negative words; "general" fits anything.
# The sentiment task (sentiment.py) and the opinions in the corpus (documents.py) both draw from here.
ADJECTIVES = {
    "general": (("good", "great", "wonderful", "lovely", "excellent", "pleasant"),
                ("bad", "awful", "terrible", "poor", "disappointing", "dreadful")),
    "story": (("exciting", "funny", "moving", "clever", "gripping", "charming"),
              ("boring", "dull", "slow", "silly", "confusing", "tedious")),
    "food": (("tasty", "delicious", "fresh", "rich", "perfect", "warm"),
             ("bland", "cold", "stale", "greasy", "salty", "burnt")),
    "service": (("friendly", "helpful", "kind", "polite", "quick", "cheerful"),
                ("rude", "unfriendly", "careless", "grumpy", "unhelpful", "impolite")),
    "place": (("peaceful", "clean", "beautiful", "quiet", "charming", "bright"),
              ("noisy", "dirty", "ugly", "crowded", "gloomy", "shabby")),
}

# Adjectives that are already extreme: "very wonderful" sounds wrong, "truly wonderful" does not.
EXTREME_ADJECTIVES = frozenset({"wonderful", "excellent", "perfect", "delicious", "awful", "terrible", "dreadful"})


def adjective_polarity() -> dict[str, int]:
    """Every review adjective -> +1 (positive) or -1 (negative). An adjective has the same polarity in every class."""
    polarity: dict[str, int] = {}
    for pos, neg in ADJECTIVES.values():
        for word in pos:
            polarity[word] = +1
        for word in neg:
            polarity[word] = -1
    return polarity
