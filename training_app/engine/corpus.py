"""The bundled corpus the starter model learns from: original English text the project writes itself.

``corpus_texts()`` returns a few hundred kilobytes of documents: explanations, how-to lists, dialogues,
questions and answers and short stories generated from the topics and vocabulary below with a seeded
random generator, chat exchanges rendered with the chat markers (``format_chat``), some of them calling
generic tools or reasoning before they answer, and every row of the sample datasets in
``datasets_app/samples/`` except the tool-calling one (``tools.jsonl`` is held out, so that a model tuned on
it can be compared with a base model that never saw it). The same seed always gives the same list, so the
corpus hash recorded with the starter model identifies it. Nothing is downloaded; nothing here imports Django.

The chat rendering must stay byte-identical to the starter tokenizer's chat template (without its leading
``<|begin_of_text|>``): the model learns the markers from this text. A test checks the two agree.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
END_OF_TURN = "<|eot_id|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (BEGIN_OF_TEXT, END_OF_TEXT, START_HEADER, END_HEADER, END_OF_TURN, PAD)
"""The starter tokenizer's special tokens, in id order (ids 0 to 5)."""

# Plain-text markers (not special tokens): the corpus uses them often enough for the tokenizer to learn them.
THINK_START, THINK_END = "<think>", "</think>"
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
TOOLS_PREAMBLE = (
    "You can call these tools, described one per line as JSON. To call one, answer with "
    '<tool_call>{"name": ..., "arguments": {...}}</tool_call>.'
)
"""The text that opens the system turn listing a conversation's tools (before one JSON schema per line)."""

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "datasets_app" / "samples"
"""The sample datasets whose rows join the generated text."""

HELD_OUT_SAMPLES = frozenset({"tools.jsonl"})
"""Sample files kept out of the corpus: tuning on them must teach the starter model something new."""

DEFAULT_DOCUMENTS = 900
"""Generated documents in the default corpus (about 500 KB of text with the sample rows)."""

Message = Mapping[str, Any]


@dataclass(frozen=True)
class Topic:
    """One subject the generator writes about: facts, ordered steps, mistakes and questions."""

    name: str
    goal: str
    facts: tuple[str, ...]
    steps: tuple[str, ...]
    mistakes: tuple[str, ...]
    questions: tuple[str, ...]


TOPICS: tuple[Topic, ...] = (
    Topic(
        name="baking bread",
        goal="bake a simple loaf of bread",
        facts=(
            "Bread needs only four ingredients: flour, water, salt and yeast.",
            "Kneading stretches the gluten in the dough so that it can hold the gas the yeast makes.",
            "A warm kitchen makes the dough rise faster, and a cool one gives it more flavour.",
            "The dough is ready to bake when a gentle poke leaves a dent that springs back slowly.",
            "A hot oven and a little steam in the first minutes give the loaf a crisp crust.",
            "A baked loaf sounds hollow when you tap the bottom with your finger.",
            "Bread keeps best in a paper bag or a cloth, not in the fridge.",
            "Whole wheat flour absorbs more water than white flour, so the dough needs a little more.",
        ),
        steps=(
            "Mix the flour, salt and yeast in a large bowl.",
            "Add warm water and stir until no dry flour is left.",
            "Knead the dough for about ten minutes until it feels smooth.",
            "Cover the bowl and let the dough rise until it has doubled in size.",
            "Shape the dough into a loaf and let it rise again for half an hour.",
            "Bake it in a hot oven for thirty to forty minutes.",
            "Let the loaf cool on a rack before you cut it.",
        ),
        mistakes=(
            "Using water that is too hot, which can kill the yeast.",
            "Adding too much flour while kneading, which makes the bread dry.",
            "Cutting the loaf while it is still hot, which leaves the inside gummy.",
            "Skipping the salt, which makes the bread taste flat.",
        ),
        questions=(
            "Why did my bread come out dense?",
            "How do I know when bread dough has risen enough?",
            "What is the easiest bread for a beginner to bake?",
        ),
    ),
    Topic(
        name="growing vegetables",
        goal="start a small vegetable garden",
        facts=(
            "Most vegetables need at least six hours of direct sunlight a day.",
            "Good soil is loose, dark and full of organic matter such as compost.",
            "Watering deeply twice a week is better than a light sprinkle every day.",
            "A layer of mulch keeps the soil moist and stops weeds from growing.",
            "Tomatoes, beans and lettuce are forgiving crops for a first garden.",
            "Planting the same crop in the same place every year invites pests and disease.",
            "Seeds sown too deep may never reach the light, so follow the depth on the packet.",
            "Picking beans and courgettes often makes the plants produce more.",
        ),
        steps=(
            "Choose a sunny spot close to a tap.",
            "Clear the grass and weeds from the bed.",
            "Dig in a few centimetres of compost.",
            "Sow seeds or set out young plants at the spacing the label suggests.",
            "Water the bed well after planting.",
            "Spread mulch between the plants once they are up.",
            "Check the garden every few days for pests and dry soil.",
        ),
        mistakes=(
            "Planting everything at once, so the whole harvest arrives in the same week.",
            "Crowding the plants, which keeps air from moving between the leaves.",
            "Watering the leaves in the evening, which encourages mould.",
            "Starting with a bed that is too big to look after.",
        ),
        questions=(
            "What vegetables are easy to grow for a beginner?",
            "How often should I water my vegetable garden?",
            "Why are the leaves on my tomato plant turning yellow?",
        ),
    ),
    Topic(
        name="making compost",
        goal="make compost at home",
        facts=(
            "Compost is made when bacteria and fungi break down kitchen and garden waste.",
            "A good heap mixes green material, such as vegetable peels, with brown material, such as dry leaves.",
            "The heap should feel as damp as a wrung-out sponge.",
            "Turning the heap lets air in and speeds up the process.",
            "Meat, dairy and oily food attract rats and should stay out of a home heap.",
            "Finished compost is dark and crumbly and smells like a forest floor.",
            "A heap that smells bad usually has too much green material and too little air.",
        ),
        steps=(
            "Pick a shady corner of the garden with bare soil underneath.",
            "Start with a layer of twigs so that air can reach the bottom.",
            "Add green and brown material in roughly equal amounts.",
            "Keep the heap damp but not wet.",
            "Turn it with a fork every few weeks.",
            "Use the compost when it is dark and crumbly, after a few months.",
        ),
        mistakes=(
            "Adding only grass clippings, which turns the heap into a slimy mat.",
            "Letting the heap dry out in summer.",
            "Putting in weeds that have already gone to seed.",
        ),
        questions=(
            "Why does my compost heap smell bad?",
            "What can I put in a compost bin?",
            "How long does compost take to be ready?",
        ),
    ),
    Topic(
        name="looking after a bicycle",
        goal="keep a bicycle in good working order",
        facts=(
            "Tyres at the right pressure roll more easily and puncture less often.",
            "A chain that is clean and lightly oiled shifts smoothly and lasts longer.",
            "Brake pads wear down over time and should be replaced before the metal shows.",
            "A loose headset makes a knocking sound when you brake hard.",
            "The recommended tyre pressure is printed on the side of the tyre.",
            "Most small repairs need only a set of hex keys, tyre levers and a pump.",
            "Riding in the rain washes oil off the chain, so it needs oiling again afterwards.",
        ),
        steps=(
            "Pump the tyres to the pressure printed on their sides.",
            "Squeeze both brakes and check that the levers stop well before the handlebar.",
            "Wipe the chain with a rag and add a drop of oil to each link.",
            "Spin each wheel and watch for wobbles or rubbing.",
            "Check that the quick release levers are closed firmly.",
            "Ring the bell and test the lights before riding at night.",
        ),
        mistakes=(
            "Using too much oil on the chain, which collects dirt.",
            "Riding on soft tyres, which leads to pinch punctures.",
            "Ignoring a squeaking brake until it stops working.",
        ),
        questions=(
            "How often should I oil my bicycle chain?",
            "What pressure should my bike tyres be?",
            "Why does my bike make a clicking noise when I pedal?",
        ),
    ),
    Topic(
        name="running for beginners",
        goal="start running regularly",
        facts=(
            "Alternating short runs with walking breaks is the gentlest way to begin.",
            "Most new runners go too fast; an easy pace is one at which you can still talk.",
            "Rest days let muscles and tendons adapt to the new load.",
            "Increasing the weekly distance slowly lowers the risk of injury.",
            "Comfortable shoes that fit well matter more than an expensive brand.",
            "A short walk before running warms up the legs and the heart.",
            "Drinking water through the day helps more than drinking a lot just before a run.",
        ),
        steps=(
            "Walk briskly for five minutes to warm up.",
            "Run gently for one minute, then walk for two.",
            "Repeat the run and walk pattern for twenty minutes.",
            "Finish with five minutes of easy walking.",
            "Rest the next day, then go out again.",
            "Add a little running time each week as it feels easier.",
        ),
        mistakes=(
            "Running every day from the first week.",
            "Trying to keep up with faster friends.",
            "Ignoring a sharp pain instead of resting.",
        ),
        questions=(
            "How should I start running if I have never run before?",
            "How fast should I run as a beginner?",
            "Why do my shins hurt after running?",
        ),
    ),
    Topic(
        name="sleeping well",
        goal="sleep better at night",
        facts=(
            "Going to bed and getting up at the same time every day steadies the body clock.",
            "Bright screens late in the evening make it harder to fall asleep.",
            "A cool, dark and quiet bedroom helps most people sleep more deeply.",
            "Coffee can keep you awake for many hours after you drink it.",
            "A short walk in daylight in the morning helps you feel sleepy at night.",
            "Heavy meals just before bed can disturb sleep.",
            "Most adults need between seven and nine hours of sleep.",
        ),
        steps=(
            "Pick a bedtime you can keep every day, weekends included.",
            "Put your phone away an hour before that time.",
            "Dim the lights and do something calm, such as reading.",
            "Keep the bedroom cool and dark.",
            "If you cannot sleep after twenty minutes, get up and read until you feel sleepy.",
        ),
        mistakes=(
            "Sleeping late at the weekend to catch up.",
            "Drinking coffee in the afternoon.",
            "Lying in bed for hours worrying about not sleeping.",
        ),
        questions=(
            "How can I fall asleep faster?",
            "Is it bad to look at my phone before bed?",
            "How many hours of sleep do I need?",
        ),
    ),
    Topic(
        name="keeping a household budget",
        goal="keep a simple monthly budget",
        facts=(
            "A budget is a plan for money before it is spent, not a record after.",
            "Writing down every expense for a month shows where the money really goes.",
            "Fixed costs such as rent change rarely; variable costs such as food change every week.",
            "Setting money aside on payday makes saving automatic.",
            "A small emergency fund keeps a surprise bill from turning into debt.",
            "Paying off the debt with the highest interest rate first costs the least in total.",
            "Reviewing the budget once a month keeps it honest.",
        ),
        steps=(
            "Add up your income for the month after tax.",
            "List the fixed costs: rent, bills, transport and loans.",
            "Decide how much you want to save and move it on payday.",
            "Split what is left between food, household items and fun.",
            "Track your spending through the month.",
            "Compare the plan with what happened and adjust next month.",
        ),
        mistakes=(
            "Forgetting bills that come once a year.",
            "Making the budget so strict that it is abandoned after a week.",
            "Saving only what is left at the end of the month.",
        ),
        questions=(
            "How do I make a budget?",
            "How much of my income should I save?",
            "What is an emergency fund?",
        ),
    ),
    Topic(
        name="learning a new language",
        goal="learn the basics of a new language",
        facts=(
            "A little practice every day works better than a long session once a week.",
            "The most common thousand words cover most of everyday conversation.",
            "Listening to the language before speaking it helps with pronunciation.",
            "Mistakes are a normal part of learning and show what to practise next.",
            "Reading short stories teaches grammar in context.",
            "Speaking with a patient partner builds confidence faster than studying alone.",
            "Flash cards that come back just before you forget them make words stick.",
        ),
        steps=(
            "Learn greetings and numbers first.",
            "Study ten new words a day with flash cards.",
            "Listen to a short recording every morning.",
            "Read a simple story each week and note the new words.",
            "Find a partner to speak with once a week.",
            "Review old words before learning new ones.",
        ),
        mistakes=(
            "Studying grammar tables without ever speaking.",
            "Waiting to speak until you feel ready.",
            "Trying to learn too many words at once.",
        ),
        questions=(
            "What is the fastest way to learn a new language?",
            "How many words do I need to hold a conversation?",
            "How can I practise speaking if I live alone?",
        ),
    ),
    Topic(
        name="writing Python code",
        goal="write a small Python program",
        facts=(
            "Python uses indentation to show which lines belong to a block.",
            "A function groups a few lines under a name so that they can be used again.",
            "A list holds items in order, and a dictionary maps keys to values.",
            "A virtual environment keeps the packages of one project apart from another.",
            "Reading the error message from the bottom up usually shows what went wrong.",
            "Small functions with clear names are easier to test than long scripts.",
            "The print function is the simplest way to see what a program is doing.",
            "A for loop walks over the items of a list one at a time.",
        ),
        steps=(
            "Create a folder for the project and a virtual environment inside it.",
            "Write the program in a file that ends in .py.",
            "Start with one small function and call it from the bottom of the file.",
            "Run the file and read any error message carefully.",
            "Add a test for the function.",
            "Commit the working code before changing it further.",
        ),
        mistakes=(
            "Mixing tabs and spaces for indentation.",
            "Naming a file after a module it imports, such as random.py.",
            "Catching every exception and hiding the real error.",
            "Changing a list while looping over it.",
        ),
        questions=(
            "What is the difference between a list and a dictionary in Python?",
            "Why should I use a virtual environment?",
            "How do I read a Python error message?",
        ),
    ),
    Topic(
        name="using version control",
        goal="keep a project under version control with Git",
        facts=(
            "Version control records every change to a project so that it can be undone.",
            "A commit is a snapshot of the project with a message that explains the change.",
            "A branch lets you work on a change without disturbing the main line.",
            "Small commits with clear messages make history easy to read.",
            "A merge brings the changes from one branch into another.",
            "The status command shows which files have changed since the last commit.",
            "Pushing sends your commits to a shared server so that others can see them.",
        ),
        steps=(
            "Create a repository in the project folder.",
            "Check the status to see which files changed.",
            "Stage the files that belong to one change.",
            "Commit them with a message that says why.",
            "Create a branch for the next piece of work.",
            "Merge the branch when the work is finished and tested.",
        ),
        mistakes=(
            "Putting unrelated changes into one commit.",
            "Writing messages such as fix or update that explain nothing.",
            "Committing passwords or secret keys.",
        ),
        questions=(
            "What is a commit?",
            "Why should I use branches?",
            "How do I write a good commit message?",
        ),
    ),
    Topic(
        name="working with databases",
        goal="design a small database table",
        facts=(
            "A table stores rows that share the same columns.",
            "A primary key gives every row a unique identity.",
            "An index makes lookups by a column fast at the cost of slower writes.",
            "A transaction groups several changes so that they all happen or none do.",
            "A foreign key links a row to a row in another table.",
            "Queries should use parameters instead of pasting user input into the text.",
            "Backups are only useful if you have tested restoring them.",
        ),
        steps=(
            "Write down the questions the data must answer.",
            "Choose a table for each kind of thing you store.",
            "Give every table a primary key.",
            "Add foreign keys for the links between tables.",
            "Add indexes for the columns you search by.",
            "Test the design with a few real queries.",
        ),
        mistakes=(
            "Storing several values in one column.",
            "Building queries by joining strings with user input.",
            "Adding an index to every column.",
        ),
        questions=(
            "What is a primary key?",
            "When should I add an index to a table?",
            "What does a database transaction do?",
        ),
    ),
    Topic(
        name="writing clear emails",
        goal="write an email that gets a quick answer",
        facts=(
            "The subject line should say what the email is about and what you need.",
            "The first sentence should carry the main point or the question.",
            "Short paragraphs are easier to read on a phone.",
            "A clear deadline helps the reader plan a reply.",
            "Reading the email aloud before sending catches most mistakes.",
            "One email per topic keeps replies from getting mixed up.",
        ),
        steps=(
            "Write a subject line that names the topic and the request.",
            "Put the question or the main point in the first sentence.",
            "Add only the details the reader needs to act.",
            "Say when you need an answer.",
            "Read it once more and remove anything extra.",
        ),
        mistakes=(
            "Hiding the question at the end of a long message.",
            "Writing a subject line such as hello.",
            "Replying to everyone when only one person needs the answer.",
        ),
        questions=(
            "How do I write a polite email asking for help?",
            "What makes a good subject line?",
            "How long should a work email be?",
        ),
    ),
    Topic(
        name="reading the weather",
        goal="read the sky for changes in the weather",
        facts=(
            "Clouds form when warm, moist air rises and cools.",
            "High, thin clouds often arrive a day before rain.",
            "Tall clouds with flat, dark bases can bring thunder and heavy showers.",
            "Air pressure that falls quickly usually means stormy weather is coming.",
            "Clear nights are colder because heat escapes into the sky.",
            "Wind blows from areas of high pressure towards areas of low pressure.",
            "Fog forms on calm nights when the ground cools the air above it.",
        ),
        steps=(
            "Look at the height and shape of the clouds.",
            "Notice which way the wind is blowing.",
            "Check whether the clouds are growing or thinning.",
            "Compare the air pressure with the day before.",
            "Put the signs together before deciding to go out.",
        ),
        mistakes=(
            "Trusting one sign instead of several.",
            "Forgetting that mountains make their own weather.",
        ),
        questions=(
            "Why is it colder on a clear night?",
            "What kind of clouds bring rain?",
            "How does air pressure change before a storm?",
        ),
    ),
    Topic(
        name="watching the night sky",
        goal="start watching the night sky",
        facts=(
            "Eyes need about twenty minutes in the dark to see faint stars.",
            "Planets shine with a steady light, while stars seem to twinkle.",
            "The Moon shows the same face to the Earth all the time.",
            "A pair of binoculars shows craters on the Moon and the moons of Jupiter.",
            "The stars seem to turn around a point in the sky near the Pole Star.",
            "City lights hide most stars, so a dark place shows many more.",
            "Meteor showers happen when the Earth passes through the dust of a comet.",
        ),
        steps=(
            "Find a dark place away from street lights.",
            "Let your eyes adjust for twenty minutes.",
            "Use a red light to read a star map.",
            "Start with the Moon and the brightest planets.",
            "Learn one new constellation each night.",
        ),
        mistakes=(
            "Looking at a bright phone screen between observations.",
            "Buying a large telescope before learning the sky.",
        ),
        questions=(
            "How can I tell a planet from a star?",
            "What can I see with binoculars at night?",
            "Why do stars twinkle?",
        ),
    ),
    Topic(
        name="saving energy at home",
        goal="lower the energy use of a home",
        facts=(
            "Heating is usually the largest energy cost in a home in a cold climate.",
            "Draughts around doors and windows let warm air escape.",
            "Turning the thermostat down by one degree saves a noticeable amount of energy.",
            "LED bulbs use far less electricity than old bulbs for the same light.",
            "Washing clothes at a lower temperature uses less energy and works for most loads.",
            "Devices on standby still draw a little power all day.",
            "Closing curtains at dusk keeps heat inside.",
        ),
        steps=(
            "Seal gaps around doors and windows.",
            "Turn the thermostat down by one degree.",
            "Replace old bulbs with LED bulbs.",
            "Switch devices off at the wall at night.",
            "Wash clothes at a lower temperature.",
        ),
        mistakes=(
            "Heating rooms that nobody uses.",
            "Blocking radiators with furniture.",
        ),
        questions=(
            "How can I lower my heating bill?",
            "Do devices on standby use electricity?",
            "Are LED bulbs worth it?",
        ),
    ),
    Topic(
        name="taking better photographs",
        goal="take better photographs with a phone",
        facts=(
            "Soft light in the early morning and late afternoon flatters most subjects.",
            "Placing the subject a little off centre often makes a picture more interesting.",
            "A clean lens removes the haze that fingerprints leave.",
            "Moving closer usually works better than zooming in.",
            "A steady hand or a wall to lean on keeps night pictures sharp.",
            "The background matters as much as the subject.",
        ),
        steps=(
            "Wipe the lens with a soft cloth.",
            "Turn on the grid lines in the camera settings.",
            "Put the subject on one of the lines.",
            "Tap the screen to focus on the subject.",
            "Hold still and take a few pictures.",
        ),
        mistakes=(
            "Shooting into bright sun behind the subject.",
            "Using digital zoom instead of walking closer.",
            "Leaving a busy background behind a face.",
        ),
        questions=(
            "How can I take sharper photos at night?",
            "What is the rule of thirds?",
            "Why do my photos look hazy?",
        ),
    ),
    Topic(
        name="travelling by train",
        goal="plan a long journey by train",
        facts=(
            "Tickets bought early are often much cheaper.",
            "A seat reservation guarantees a place on busy routes.",
            "Changing trains needs a buffer of at least fifteen minutes.",
            "Night trains save the cost of a hotel and a day of travel.",
            "Many stations keep luggage lockers near the main hall.",
            "Timetables change twice a year, so check the dates of your trip.",
        ),
        steps=(
            "Choose the dates and check the timetable.",
            "Compare the prices of direct and connecting trains.",
            "Book the tickets and reserve seats.",
            "Pack food and water for the journey.",
            "Arrive at the station early enough to find the platform.",
        ),
        mistakes=(
            "Leaving only five minutes for a change.",
            "Forgetting to check the return date.",
        ),
        questions=(
            "How can I find cheap train tickets?",
            "Do I need a seat reservation?",
            "How much time should I leave between trains?",
        ),
    ),
    Topic(
        name="making tea and coffee",
        goal="make a good cup of tea or coffee",
        facts=(
            "Green tea tastes bitter when the water is boiling, so it needs cooler water.",
            "Black tea needs water just off the boil and three to five minutes.",
            "Freshly ground coffee keeps more of its aroma than ground coffee bought weeks ago.",
            "A finer grind extracts faster, and a coarser grind extracts slower.",
            "Coffee beans keep best in a closed container away from light.",
            "Clean equipment matters, because old oil makes coffee taste stale.",
        ),
        steps=(
            "Heat fresh water to the right temperature.",
            "Warm the cup or the pot with a little hot water.",
            "Measure the tea or the coffee.",
            "Pour the water and start a timer.",
            "Remove the leaves or press the coffee when the time is up.",
        ),
        mistakes=(
            "Leaving tea leaves in the water for too long.",
            "Storing coffee beans in the fridge.",
        ),
        questions=(
            "Why does my green tea taste bitter?",
            "How long should I brew black tea?",
            "How should I store coffee beans?",
        ),
    ),
    Topic(
        name="testing software",
        goal="write useful tests for a program",
        facts=(
            "A test runs a piece of code and checks that the result is what you expect.",
            "A good test checks one behaviour and has a name that says which.",
            "Tests that run fast get run often.",
            "A failing test written before a bug fix proves that the fix works.",
            "Tests should not depend on the order in which they run.",
            "Testing the edges, such as an empty list, finds many bugs.",
            "A test that sometimes fails for no reason should be fixed at once.",
        ),
        steps=(
            "Pick one behaviour the program must have.",
            "Write a test that fails without that behaviour.",
            "Write the simplest code that makes the test pass.",
            "Run all the tests.",
            "Tidy the code while the tests stay green.",
        ),
        mistakes=(
            "Testing how the code works instead of what it does.",
            "Sharing state between tests.",
            "Ignoring a flaky test.",
        ),
        questions=(
            "What makes a good unit test?",
            "Why should I write a test before fixing a bug?",
            "What is a flaky test?",
        ),
    ),
    Topic(
        name="training a language model",
        goal="fine-tune a small language model",
        facts=(
            "A language model learns to predict the next token from the tokens before it.",
            "A tokenizer splits text into tokens, which are whole words or pieces of words.",
            "The training loss measures how surprised the model is by the real next token.",
            "A learning rate that is too high makes the loss jump around instead of falling.",
            "Fine-tuning starts from a trained model and teaches it a narrower task.",
            "LoRA trains small extra matrices and leaves the original weights frozen.",
            "A validation set that the model never trains on shows whether it generalizes.",
            "A chat template turns a list of messages into the text the model was trained on.",
        ),
        steps=(
            "Collect examples of the task and clean them.",
            "Hold back a small validation set.",
            "Choose a base model that fits your hardware.",
            "Start with a small learning rate and a few hundred steps.",
            "Watch the training and validation loss as the run goes on.",
            "Compare the answers of the base and the tuned model on the same prompts.",
        ),
        mistakes=(
            "Training for too long until the model repeats the training data.",
            "Evaluating on examples the model has already seen.",
            "Using a different chat template for training and for chatting.",
        ),
        questions=(
            "What does the training loss tell me?",
            "What is LoRA?",
            "Why do I need a validation set?",
        ),
    ),
    Topic(
        name="basic first aid",
        goal="treat a small cut or burn",
        facts=(
            "Pressing on a bleeding cut with a clean cloth usually stops the bleeding.",
            "A small burn should be cooled under running water for twenty minutes.",
            "Ice placed directly on the skin can damage it.",
            "A wound that is deep, wide or dirty should be seen by a doctor.",
            "Washing your hands before touching a wound lowers the risk of infection.",
            "Redness that spreads, or a wound that gets more painful, can be a sign of infection.",
        ),
        steps=(
            "Wash your hands.",
            "Press on the cut with a clean cloth until it stops bleeding.",
            "Rinse the wound with clean water.",
            "Cover it with a plaster or a clean dressing.",
            "Check it every day for signs of infection.",
        ),
        mistakes=(
            "Putting butter or oil on a burn.",
            "Removing a plaster to check the wound every hour.",
        ),
        questions=(
            "How should I treat a small burn?",
            "When does a cut need a doctor?",
            "How do I stop a cut from bleeding?",
        ),
    ),
    Topic(
        name="serving web pages",
        goal="understand how a web page reaches a browser",
        facts=(
            "A browser asks a server for a page with an HTTP request.",
            "The server answers with a status code, headers and a body.",
            "A status code of two hundred means the request worked.",
            "A status code of four hundred and four means the page was not found.",
            "Encrypted connections keep others on the network from reading the traffic.",
            "A cache keeps a copy of a page so that the next request is faster.",
            "A form sends data to the server, usually with a POST request.",
        ),
        steps=(
            "The browser looks up the address of the server.",
            "It opens a connection and sends a request.",
            "The server runs the code for that address.",
            "The server sends back the page and its status.",
            "The browser draws the page and asks for images and styles.",
        ),
        mistakes=(
            "Trusting data from a form without checking it.",
            "Showing a stack trace to the visitor when something fails.",
        ),
        questions=(
            "What happens when I type an address into a browser?",
            "What does a status code of four hundred and four mean?",
            "What is a cache?",
        ),
    ),
)

_EXPLAINER_OPENERS = (
    "Here is a short guide to {name}.",
    "Many people ask about {name}.",
    "A few facts about {name} are worth knowing.",
    "This note is about {name}.",
    "If you are new to {name}, start here.",
    "Some basics of {name}.",
    "People who are good at {name} tend to know a few simple things.",
)
_EXPLAINER_CLOSERS = (
    "With a little practice it becomes easy.",
    "None of this is hard once you have done it a few times.",
    "Start small and learn from each attempt.",
    "The rest comes with experience.",
    "That is enough to get started.",
    "",
)
_HOWTO_TITLES = (
    "How to {goal}",
    "A simple way to {goal}",
    "Steps to {goal}",
    "If you want to {goal}, follow these steps",
)
_CONNECTORS = ("Also,", "In practice,", "It helps to remember that", "Keep in mind that", "Note that", "Besides,")
_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a friendly assistant. Answer clearly and briefly.",
    "You are a patient teacher. Explain things step by step.",
    "You are a careful assistant. If you are not sure, say so.",
    "You answer questions about everyday topics in plain language.",
)
_THANKS = ("Thank you, that helps.", "Thanks, that is clear.", "Great, thank you.", "That makes sense, thanks.")
_WELCOME = (
    "You are welcome. Good luck!",
    "Glad it helps. Enjoy it!",
    "You are welcome. Come back if you have more questions.",
    "Happy to help.",
)
_FOLLOW_UPS = (
    "What mistakes should I avoid?",
    "What do beginners usually get wrong?",
    "Is there anything I should be careful about?",
)
_STEP_REQUESTS = ("Can you give me the steps?", "How do I do it, step by step?", "What should I do first?")

_NAMES = (
    "Anna", "Ben", "Clara", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemal", "Lena",
    "Marco", "Nora", "Omar", "Priya", "Quentin", "Rosa", "Sam", "Tara", "Umar", "Vera", "Will", "Yusuf", "Zoe",
)  # fmt: skip
_PLACES = (
    "the harbour", "the old library", "the market square", "the train station", "the village bakery",
    "the garden behind the house", "the top of the hill", "the river bank", "the small workshop",
    "the school yard", "the bus stop", "the kitchen", "the quiet office", "the bridge over the canal",
)  # fmt: skip
_TIMES = (
    "Early in the morning", "Just after lunch", "Late in the afternoon", "In the evening", "On a cold Monday",
    "On the first warm day of spring", "One rainy Sunday", "At the end of the summer", "Before sunrise",
)  # fmt: skip
_WEATHER = (
    "the sky was grey and low", "a light rain was falling", "the sun was bright and the air was still",
    "a cold wind came from the north", "fog lay over the fields", "the streets were wet after a storm",
    "the first snow had covered the roofs", "the air smelled of cut grass",
)  # fmt: skip
_OBJECTS = (
    "a wooden box", "an old map", "a red bicycle", "a basket of apples", "a letter with no stamp",
    "a broken clock", "a notebook full of drawings", "a small brass key", "a jar of honey", "a blue umbrella",
    "a loaf of warm bread", "a pair of muddy boots", "a paper kite", "a lantern",
)  # fmt: skip
_ACTIONS = (
    "carried {obj} to {place}", "found {obj} near {place}", "left {obj} at {place}",
    "was looking for {obj} at {place}", "brought {obj} back from {place}", "mended {obj} in {place}",
)  # fmt: skip
_FEELINGS = ("happy", "tired", "curious", "worried", "calm", "surprised", "proud", "a little nervous")
_STORY_MIDDLES = (
    "{a} asked {b} to help, and together they walked to {place}.",
    "On the way, {a} met {b}, who was {feeling} and in no hurry.",
    "{b} laughed and said that it brought back a summer long ago.",
    "Nobody knew who had left it there, so {a} asked around.",
    "{a} sat down for a moment and watched the people pass.",
    "It took longer than expected, but {a} did not mind.",
    "{b} offered a cup of tea, and they talked for an hour.",
    "The shopkeeper remembered {obj} and told a long story about it.",
)  # fmt: skip
_STORY_ENDINGS = (
    "By the evening everything was back where it belonged.",
    "{a} walked home feeling {feeling}.",
    "It was a small thing, but {a} remembered that day for a long time.",
    "The next morning, {a} went back to {place} to say thank you.",
    "They agreed to meet again the following week.",
)  # fmt: skip

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": schema}}


# Generic tools for the generated tool-calling chats: the model learns the call format from them, not the
# tools of the held-out sample (weather, currencies, calendar).
_GENERIC_TOOLS = {
    "look_up": _tool(
        "look_up", "Look up a short fact about a subject.",
        {"subject": {"type": "string", "description": "What to look up."}}, ["subject"],
    ),
    "list_steps": _tool(
        "list_steps", "List the steps to reach a goal.",
        {"goal": {"type": "string", "description": "What the user wants to do."}}, ["goal"],
    ),
    "set_reminder": _tool(
        "set_reminder", "Remind the user to do something on a day of the week.",
        {"task": {"type": "string"}, "day": {"type": "string", "enum": list(_DAYS)}}, ["task", "day"],
    ),
}  # fmt: skip
_REASONS = {
    "look_up": "The user asks about {name}. I should look up a fact before I answer.",
    "list_steps": "The user wants to {goal}. The list_steps tool gives the steps.",
    "set_reminder": "The user wants a reminder on {day}, so I call set_reminder.",
}
_REMINDER_REQUESTS = ("Remind me to {task} on {day}.", "Can you remind me on {day} to {task}?",
                      "Please set a reminder for {day}: {task}.")  # fmt: skip

_KEEP_CAPITAL = frozenset({"I", "Python", "Git", "LoRA", "HTTP", "LED", "The Moon", "Moon", "Earth"})


def format_chat(messages: Iterable[Message], tools: Iterable[Mapping[str, Any]] | None = None) -> str:
    """Render messages with the starter model's chat markers, as its chat template does after the BOS token.

    Each message becomes ``<|start_header_id|>ROLE<|end_header_id|>\\n\\nCONTENT<|eot_id|>`` with the
    content stripped of surrounding whitespace; any role is accepted (system, user, assistant, tool). With
    ``tools``, a system turn comes first: ``TOOLS_PREAMBLE`` and one JSON schema per line. An assistant turn
    is its reasoning as ``<think>…</think>``, its text, then one ``<tool_call>{"name": …, "arguments": …}
    </tool_call>`` per call, joined by newlines (arguments given as a JSON string are written as they are).
    """
    turns: list[str] = []
    schemas = list(tools or [])
    if schemas:
        listing = "".join("\n" + _to_json(tool.get("function", tool)) for tool in schemas)
        turns.append(f"{START_HEADER}system{END_HEADER}\n\n{TOOLS_PREAMBLE}{listing}{END_OF_TURN}")
    for message in messages:
        content = message.get("content")
        text = content.strip() if isinstance(content, str) else ""
        if message["role"] == "assistant":
            text = "\n".join(_assistant_parts(message, text))
        turns.append(f"{START_HEADER}{message['role']}{END_HEADER}\n\n{text}{END_OF_TURN}")
    return "".join(turns)


def _assistant_parts(message: Message, text: str) -> list[str]:
    parts: list[str] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning.strip():
        parts.append(f"{THINK_START}{reasoning.strip()}{THINK_END}")
    if text:
        parts.append(text)
    for call in message.get("tool_calls") or []:
        function = call.get("function", call)
        arguments = function.get("arguments", {})
        arguments = arguments if isinstance(arguments, str) else _to_json(arguments)
        call_json = f'{{"name": {_to_json(function["name"])}, "arguments": {arguments}}}'
        parts.append(f"{TOOL_CALL_START}{call_json}{TOOL_CALL_END}")
    return parts


def _to_json(value: Any) -> str:
    """JSON as the chat template's ``tojson`` filter writes it (transformers': no ASCII escaping, ", " and ": ")."""
    return json.dumps(value, ensure_ascii=False)


def corpus_texts(seed: int = 0, documents: int = DEFAULT_DOCUMENTS) -> list[str]:
    """Return the corpus: ``documents`` generated texts followed by the sample datasets' rows.

    Deterministic for a given ``seed`` and ``documents``; chat exchanges (generated and from the samples)
    are rendered with ``format_chat``, without a BOS token: the caller adds document boundaries.
    """
    rng = random.Random(seed)
    generated = [_generate_document(rng, TOPICS[index % len(TOPICS)]) for index in range(documents)]
    return generated + list(sample_dataset_texts())


def corpus_hash(texts: Iterable[str]) -> str:
    """Return a SHA-256 hex digest identifying a list of corpus texts (their content and order)."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()


def sample_dataset_texts(samples_dir: Path = SAMPLES_DIR) -> Iterator[str]:
    """Yield one text per row of the sample datasets (``*.jsonl`` in ``samples_dir``, sorted by file name),
    except the held-out ones (``HELD_OUT_SAMPLES``).

    Rows are read as data: ``messages`` (with their ``tools``) become a chat, ``instruction``/``input``/``output``
    and ``prompt`` with ``completion`` or ``chosen`` (never ``rejected``) become a user/assistant exchange,
    ``text`` is used as it is. Rows of any other shape are skipped.
    """
    for path in sorted(samples_dir.glob("*.jsonl")):
        if path.name in HELD_OUT_SAMPLES:
            continue
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    text = _row_text(json.loads(line))
                    if text:
                        yield text


def _row_text(row: dict[str, object]) -> str | None:
    messages = row.get("messages")
    if isinstance(messages, list):
        tools = row.get("tools")
        return format_chat(
            (message for message in messages if isinstance(message, dict) and isinstance(message.get("role"), str)),
            tools if isinstance(tools, list) else None,
        )
    if isinstance(row.get("instruction"), str) and isinstance(row.get("output"), str):
        prompt = str(row["instruction"])
        if row.get("input"):
            prompt = f"{prompt}\n\n{row['input']}"
        return format_chat([{"role": "user", "content": prompt}, {"role": "assistant", "content": str(row["output"])}])
    answer = row.get("completion", row.get("chosen"))
    if isinstance(row.get("prompt"), str) and isinstance(answer, str):
        return format_chat([{"role": "user", "content": str(row["prompt"])}, {"role": "assistant", "content": answer}])
    text = row.get("text")
    return text if isinstance(text, str) else None


def _generate_document(rng: random.Random, topic: Topic) -> str:
    kind = rng.choices(
        (_explainer, _howto, _dialogue, _questions_and_answers, _story, _chat, _tool_chat),
        weights=(3, 2, 2, 2, 3, 4, 2),
    )[0]
    return kind(rng, topic)


def _with_connectors(rng: random.Random, sentences: list[str]) -> str:
    """Join sentences into a paragraph, linking some with a connector so that paragraphs vary."""
    parts: list[str] = []
    for position, sentence in enumerate(sentences):
        if position and rng.random() < 0.3:
            parts.append(f"{rng.choice(_CONNECTORS)} {_lower_first(sentence)}")
        else:
            parts.append(sentence)
    return " ".join(parts)


def _lower_first(sentence: str) -> str:
    first_word = sentence.split(" ", 1)[0]
    if first_word in _KEEP_CAPITAL or sentence.startswith("The Moon"):
        return sentence
    return sentence[0].lower() + sentence[1:]


def _facts(rng: random.Random, topic: Topic, low: int, high: int) -> list[str]:
    return rng.sample(topic.facts, rng.randint(low, min(high, len(topic.facts))))


def _numbered(items: Iterable[str]) -> str:
    return "\n".join(f"{number}. {item}" for number, item in enumerate(items, start=1))


def _explainer(rng: random.Random, topic: Topic) -> str:
    opener = rng.choice(_EXPLAINER_OPENERS).format(name=topic.name)
    paragraph = _with_connectors(rng, _facts(rng, topic, 3, 6))
    text = f"{opener} {paragraph}"
    if rng.random() < 0.5:
        text += f"\n\nOne common mistake is this: {_lower_first(rng.choice(topic.mistakes))}"
    closer = rng.choice(_EXPLAINER_CLOSERS)
    return f"{text} {closer}".strip()


def _howto(rng: random.Random, topic: Topic) -> str:
    title = rng.choice(_HOWTO_TITLES).format(goal=topic.goal)
    intro = rng.choice(topic.facts)
    tip = rng.choice(topic.mistakes)
    return f"{title}.\n\n{intro}\n\n{_numbered(topic.steps)}\n\nAvoid this: {_lower_first(tip)}"


def _dialogue(rng: random.Random, topic: Topic) -> str:
    first, second = rng.sample(_NAMES, 2)
    answer = _with_connectors(rng, _facts(rng, topic, 2, 3))
    lines = [f"{first}: {rng.choice(topic.questions)}", f"{second}: {answer}"]
    if rng.random() < 0.6:
        lines += [f"{first}: {rng.choice(_FOLLOW_UPS)}", f"{second}: {rng.choice(topic.mistakes)}"]
    lines += [f"{first}: {rng.choice(_THANKS)}", f"{second}: {rng.choice(_WELCOME)}"]
    return "\n".join(lines)


def _questions_and_answers(rng: random.Random, topic: Topic) -> str:
    pairs = [
        f"Q: {question}\nA: {_with_connectors(rng, _facts(rng, topic, 1, 3))}"
        for question in rng.sample(topic.questions, rng.randint(1, len(topic.questions)))
    ]
    return f"Questions and answers about {topic.name}.\n\n" + "\n\n".join(pairs)


def _story(rng: random.Random, topic: Topic) -> str:
    first, second = rng.sample(_NAMES, 2)
    values = {
        "a": first,
        "b": second,
        "obj": rng.choice(_OBJECTS),
        "place": rng.choice(_PLACES),
        "feeling": rng.choice(_FEELINGS),
    }
    action = rng.choice(_ACTIONS).format(**values)
    sentences = [f"{rng.choice(_TIMES)}, {rng.choice(_WEATHER)}.", f"{first} {action}."]
    sentences += [middle.format(**values) for middle in rng.sample(_STORY_MIDDLES, rng.randint(2, 4))]
    if rng.random() < 0.4:
        sentences.append(f"{second} talked about {topic.name}. {rng.choice(topic.facts)}")
    sentences.append(rng.choice(_STORY_ENDINGS).format(**values))
    return " ".join(sentences)


def _chat(rng: random.Random, topic: Topic) -> str:
    messages: list[dict[str, str]] = []
    if rng.random() < 0.35:
        messages.append({"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
    answer = _with_connectors(rng, _facts(rng, topic, 2, 4))
    messages += [{"role": "user", "content": rng.choice(topic.questions)}, {"role": "assistant", "content": answer}]
    follow_up = rng.random()
    if follow_up < 0.3:
        messages += [
            {"role": "user", "content": rng.choice(_STEP_REQUESTS)},
            {"role": "assistant", "content": f"Here are the steps to {topic.goal}:\n\n{_numbered(topic.steps)}"},
        ]
    elif follow_up < 0.55:
        messages += [
            {"role": "user", "content": rng.choice(_FOLLOW_UPS)},
            {"role": "assistant", "content": "\n".join(f"- {mistake}" for mistake in topic.mistakes)},
        ]
    elif follow_up < 0.7:
        messages += [
            {"role": "user", "content": rng.choice(_THANKS)},
            {"role": "assistant", "content": rng.choice(_WELCOME)},
        ]
    return format_chat(messages)


def _tool_chat(rng: random.Random, topic: Topic) -> str:
    """A chat that offers generic tools: the assistant calls one, reads its result and answers (or, now and
    then, answers without a call); some assistant turns reason first."""
    name = rng.choice(("look_up", "list_steps", "set_reminder", "none"))
    others = [tool for key, tool in _GENERIC_TOOLS.items() if key != name]
    tools = ([_GENERIC_TOOLS[name]] if name in _GENERIC_TOOLS else []) + rng.sample(others, rng.randint(1, 2))
    rng.shuffle(tools)
    if name == "none":
        answer = _with_connectors(rng, _facts(rng, topic, 1, 3))
        messages = [{"role": "user", "content": rng.choice(topic.questions)}, {"role": "assistant", "content": answer}]
        return format_chat(messages, tools)
    day = rng.choice(_DAYS)
    task = _lower_first(rng.choice(topic.steps)).rstrip(".")
    if name == "look_up":
        question, arguments = rng.choice(topic.questions), {"subject": topic.name}
        fact = rng.choice(topic.facts)
        result: dict[str, Any] = {"subject": topic.name, "fact": fact}
        answer = fact
    elif name == "list_steps":
        question, arguments = rng.choice(_HOWTO_TITLES).format(goal=topic.goal) + "?", {"goal": topic.goal}
        steps = list(topic.steps[: rng.randint(3, len(topic.steps))])
        result = {"goal": topic.goal, "steps": steps}
        answer = f"Here are the steps to {topic.goal}:\n\n{_numbered(steps)}"
    else:
        question, arguments = rng.choice(_REMINDER_REQUESTS).format(task=task, day=day), {"task": task, "day": day}
        result = {"ok": True, "day": day}
        answer = f"Done. I will remind you on {day} to {task}."
    call: dict[str, Any] = {"role": "assistant", "content": ""}
    if rng.random() < 0.3:
        call["reasoning_content"] = _REASONS[name].format(name=topic.name, goal=topic.goal, day=day)
    call["tool_calls"] = [{"type": "function", "id": "call_1", "function": {"name": name, "arguments": arguments}}]
    messages = [
        {"role": "user", "content": question},
        call,
        {"role": "tool", "tool_call_id": "call_1", "name": name, "content": _to_json(result)},
        {"role": "assistant", "content": answer},
    ]
    return format_chat(messages, tools)
