"""A small built-in corpus of empathetic exchanges, so the main job and the tests train on real text with
nothing to download.

Each exchange is one speaker utterance about a situation and the listener's empathetic reply, in the project's
prompt format (`Human: {utterance} ### Assistant: {reply}`). They are generated deterministically from
templates: for every emotion, each of its situations is paired with each of its reply templates (the reply
names the situation's subject), and a conversational opener varies the utterance — a few hundred exchanges in
all, the same on every machine.
"""

from __future__ import annotations

import dataclasses
import re

PROMPT_TEMPLATE = "Human: {utterance} ### Assistant:"

# Openers prefixed to the utterance; the first reply of every situation gets none, so each bare situation
# sentence is in the corpus verbatim (the tiny config's generation prompt is one of them).
OPENERS = ("", "You know what? ", "I have to tell someone. ", "Honestly, ", "So, ")

# emotion -> (situations as (utterance, subject of the reply)), reply templates with a {thing} slot.
_TEMPLATES: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "disappointed": (
        (("I failed my driving test today.", "the driving test"),
         ("My team lost the final game of the season.", "the final game"),
         ("The concert I waited months for got cancelled.", "the concert"),
         ("I didn't get the promotion I worked so hard for.", "the promotion"),
         ("My best friend forgot my birthday.", "your birthday"),
         ("The trip we planned fell through at the last minute.", "the trip")),
        ("I'm sorry about {thing}. That must be really disappointing, but you can try again.",
         "That's a letdown. It's okay to feel disappointed about {thing}.",
         "Oh no, {thing} meant a lot to you. Be kind to yourself today.",
         "I understand how much {thing} mattered. Next time will be better.",
         "That sounds so frustrating. What will you do after {thing}?"),
    ),
    "sad": (
        (("My old dog passed away last night.", "your dog"),
         ("My grandmother is in the hospital.", "your grandmother"),
         ("I had to say goodbye to my closest friend who moved abroad.", "your friend"),
         ("I lost my favourite photo album in the move.", "the photo album"),
         ("My parents are getting divorced.", "your parents"),
         ("I miss my hometown so much.", "your hometown")),
        ("I'm so sorry. What happened with {thing} is very hard, and it's okay to be sad.",
         "That is heartbreaking. I'm here for you if you want to talk about {thing}.",
         "I can hear how much you care about {thing}. Take all the time you need.",
         "That must hurt a lot. Do you have someone with you right now?",
         "I'm sorry you're going through this. I can tell how much {thing} means to you."),
    ),
    "happy": (
        (("I just got accepted to my dream university!", "the university"),
         ("We're having a baby in the spring!", "the baby"),
         ("I finally finished my first marathon.", "the marathon"),
         ("My sister is getting married next month.", "the wedding"),
         ("I got the job I interviewed for last week!", "the new job"),
         ("My garden is full of tomatoes this year.", "your garden")),
        ("That's wonderful news! Congratulations on {thing}!",
         "I'm so happy for you. You must be thrilled about {thing}.",
         "How exciting! You really deserve {thing}.",
         "That made my day. Tell me more about {thing}!",
         "Congratulations! All your effort paid off with {thing}."),
    ),
    "angry": (
        (("My neighbour keeps parking in my spot.", "the parking spot"),
         ("Someone stole my bike from outside the library.", "your bike"),
         ("My roommate ate the food I saved for dinner.", "your dinner"),
         ("The airline lost my luggage again.", "your luggage"),
         ("A coworker took credit for my idea in the meeting.", "your idea"),
         ("The repair shop charged me twice for the same job.", "the bill")),
        ("That would make me angry too. You have every right to be upset about {thing}.",
         "How unfair! Have you been able to talk to someone about {thing}?",
         "That's really frustrating. I hope {thing} gets sorted out soon.",
         "I understand your anger. Nobody should have to deal with that over {thing}.",
         "Ugh, that's not okay. What do you want to do about {thing}?"),
    ),
    "surprised": (
        (("My friends threw me a surprise party yesterday!", "the party"),
         ("I found a hundred dollars in an old coat.", "the money"),
         ("My brother showed up at my door after five years abroad.", "your brother"),
         ("I won the raffle at work without even knowing I entered.", "the raffle"),
         ("My shy cousin sang on stage last night.", "your cousin"),
         ("The old bakery downtown reopened today.", "the bakery")),
        ("Wow, I didn't see that coming! How did you feel about {thing}?",
         "What a surprise! That must have been quite a moment with {thing}.",
         "No way! The news about {thing} sounds amazing.",
         "That's incredible. I bet you're still smiling about {thing}.",
         "Really? Tell me everything about {thing}!"),
    ),
    "afraid": (
        (("I heard strange noises downstairs last night.", "the noises"),
         ("I have surgery scheduled for next week.", "the surgery"),
         ("I have to give a speech in front of the whole school.", "the speech"),
         ("There was a big storm and the power went out.", "the storm"),
         ("I'm flying for the first time tomorrow.", "the flight"),
         ("My car skidded on the ice this morning.", "the ice")),
        ("That sounds scary. It's natural to feel afraid about {thing}.",
         "I'm glad you told me. You are not alone with {thing}.",
         "Take a deep breath. What would help you feel safer about {thing}?",
         "That would frighten anyone. I hope {thing} turns out fine.",
         "You're braver than you think. We can face {thing} one step at a time."),
    ),
    "disgusted": (
        (("I found a hair in my soup at the restaurant.", "the soup"),
         ("The fridge at work smells like rotten fish.", "the fridge"),
         ("Someone left trash all over the park.", "the park"),
         ("My roommate never washes the dishes.", "the dishes"),
         ("The bus seat was covered in old gum.", "the bus seat"),
         ("I stepped in something awful on the way home.", "your shoes")),
        ("Yuck, that's gross. I'd be disgusted by {thing} too.",
         "Ew! I hope someone deals with {thing} soon.",
         "That's so unpleasant. Did you say anything about {thing}?",
         "How disgusting. Nobody should have to put up with {thing}.",
         "Oh no, that's awful. At least you can laugh about {thing} later."),
    ),
    "proud": (
        (("My son read his first book all by himself.", "your son"),
         ("I paid off my student loans this month.", "the loans"),
         ("I built a bookshelf with my own hands.", "the bookshelf"),
         ("My team shipped the project on time.", "the project"),
         ("I've been sober for a whole year.", "this year"),
         ("I learned to play a full song on the guitar.", "the song")),
        ("You should be proud! What you did with {thing} is a big achievement.",
         "That's amazing. All your hard work shows in {thing}.",
         "Well done! How does it feel to see {thing} come true?",
         "I'm proud of you too. Let's celebrate {thing}!",
         "That's fantastic. Keep up the great work after {thing}."),
    ),
    "lonely": (
        (("I moved to a new city and I don't know anyone.", "the new city"),
         ("I spent the holidays alone this year.", "the holidays"),
         ("All my friends are busy with their own lives.", "your friends"),
         ("I eat dinner by myself every night.", "dinner"),
         ("Nobody called me on my birthday.", "your birthday"),
         ("My kids moved out and the house feels empty.", "the house")),
        ("That sounds lonely. I'm here to talk whenever you need, even about {thing}.",
         "I'm sorry you feel alone. Maybe we can find a way to meet people around {thing}.",
         "Feeling lonely is hard. Thank you for telling me about {thing}.",
         "You matter, and you're not alone. How have you been coping with {thing}?",
         "That must be tough. Would a small plan for {thing} help?"),
    ),
    "anxious": (
        (("My final exams start on Monday.", "the exams"),
         ("I have a job interview tomorrow morning.", "the interview"),
         ("I'm waiting for my medical test results.", "the results"),
         ("Rent is due and I'm short on money.", "the rent"),
         ("I have to tell my boss I made a mistake.", "the mistake"),
         ("My daughter is driving alone for the first time.", "your daughter")),
        ("It's normal to feel anxious about {thing}. You've prepared more than you think.",
         "That sounds stressful. Try to rest tonight before {thing}.",
         "I understand the worry. Whatever happens with {thing}, you'll handle it.",
         "Take it one step at a time. The worry about {thing} will pass.",
         "Waiting is the hardest part. I hope {thing} goes well for you."),
    ),
}

EMOTIONS: tuple[str, ...] = tuple(_TEMPLATES)


@dataclasses.dataclass(frozen=True)
class Exchange:
    emotion: str
    situation: str  # the bare situation sentence
    utterance: str  # what the speaker says (opener + situation)
    reply: str

    @property
    def prompt(self) -> str:
        """`Human: {utterance} ### Assistant:` — what the model is given."""
        return PROMPT_TEMPLATE.format(utterance=self.utterance)

    @property
    def completion(self) -> str:
        """` {reply}` — what the model learns to write after the prompt."""
        return " " + self.reply

    @property
    def text(self) -> str:
        return self.prompt + self.completion


def builtin_exchanges() -> list[Exchange]:
    """All exchanges, in a fixed order (emotion, situation, reply template)."""
    out = []
    for emotion, (situations, replies) in _TEMPLATES.items():
        for situation, thing in situations:
            for j, template in enumerate(replies):
                utterance = _join_opener(OPENERS[j % len(OPENERS)], situation)
                reply = _capitalize_sentences(template.format(thing=thing))
                out.append(Exchange(emotion=emotion, situation=situation, utterance=utterance, reply=reply))
    return out


def _join_opener(opener: str, sentence: str) -> str:
    """`"Honestly, " + "My dog ..."` → `"Honestly, my dog ..."` (the pronoun "I" stays capitalised)."""
    if opener.endswith(", ") and not re.match(r"I\b", sentence):
        sentence = sentence[:1].lower() + sentence[1:]
    return opener + sentence


def _capitalize_sentences(text: str) -> str:
    """Capitalises a sentence that begins with a substituted `{thing}` ("the bill ..." → "The bill ...")."""
    return re.sub(r"(^|[.!?] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
