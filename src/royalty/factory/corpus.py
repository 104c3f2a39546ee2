"""The built-in English corpus: what ``royalty model init-tiny`` / ``pretrain`` learn from when no corpus is given.

Plain, original sentences about everyday things (first aid, cooking, weather, animals, places, numbers, time) and
simple question/answer pairs, about 50 KB. Part is written out by hand; the rest comes from small fact tables put
through a few sentence patterns, so the text stays varied without being long to read here. ``builtin_texts()`` is
deterministic: the same list in the same order on every call, so a tokenizer trained on it is reproducible.
"""

from __future__ import annotations

from functools import cache

_PARAGRAPHS = """
The sun rises in the east and sets in the west. In the morning the light is soft, and by noon it is bright and warm.

Water boils at one hundred degrees Celsius at sea level. High in the mountains it boils at a lower temperature, so food takes longer to cook.

A week has seven days. Monday comes after Sunday, and Saturday comes before Sunday.

There are twelve months in a year. January is the first month and December is the last.

Most plants need light, water and air to grow. Their leaves turn sunlight into food for the plant.

If someone has a small cut, wash it gently with clean water. Press a clean cloth on it until the bleeding stops, then cover it with a plaster.

For a minor burn, cool the skin under cool running water for at least ten minutes. Do not put ice, butter or oil on a burn.

If a person faints, lay them on their back and raise their legs a little. Loosen tight clothing and check that they are breathing.

When someone is choking and cannot speak, give up to five firm blows between the shoulder blades. If that does not work, call for help at once.

A sprained ankle should be rested and raised. A cold pack wrapped in a towel can reduce the swelling for the first day or two.

If you see a person who is not breathing, call emergency services straight away. Start chest compressions if you have been trained to do so.

A nosebleed usually stops on its own. Sit up, lean forward a little, and pinch the soft part of the nose for ten minutes.

Keep a first aid kit at home and in the car. It should hold plasters, bandages, gloves, tape, scissors and a simple guide.

Wash your hands with soap and warm water for about twenty seconds. Clean hands stop many illnesses from spreading.

To cook rice, rinse it first, then simmer it in twice its volume of water. Keep the lid on and let it rest for five minutes before serving.

A good soup starts with onions cooked slowly in a little oil. Add vegetables, stock and herbs, and let it simmer until everything is soft.

Bread is made from flour, water, salt and yeast. The dough rises as the yeast makes small bubbles of gas.

When you bake a cake, measure the flour and sugar carefully. Too much flour makes it dry, and too little makes it fall.

Fresh herbs such as basil and parsley are best added at the end of cooking. Dried herbs can go in earlier.

Always cut raw meat on a separate board from vegetables. Wash the board and the knife with hot soapy water afterwards.

Eggs can be boiled, fried, poached or scrambled. A soft boiled egg takes about six minutes in boiling water.

A salad is quick to make. Mix leaves, tomatoes and cucumber, then add a little oil, lemon juice and salt.

Clouds form when warm, wet air rises and cools. The water in the air turns into tiny drops that we see as clouds.

Thunder is the sound made by lightning. Light travels faster than sound, so we see the flash before we hear the thunder.

Snow falls when the air is cold enough for water to freeze into crystals. No two snowflakes look exactly the same.

A rainbow appears when sunlight shines through raindrops. The light bends and splits into red, orange, yellow, green, blue and violet.

Wind is moving air. It blows from places where the air pressure is high to places where it is low.

Fog is a cloud that touches the ground. It often forms on cool, calm mornings near rivers and lakes.

In summer the days are long and the nights are short. In winter it is the other way around.

The moon does not make its own light. It shines because it reflects light from the sun.

The earth goes around the sun once a year. It also spins once a day, which gives us day and night.

A map shows where places are. North is usually at the top of the map.

Libraries lend books for free. You can borrow a book, read it at home, and bring it back when you are done.

A good night of sleep helps the body and the mind. Most adults need between seven and nine hours.

Drinking water through the day keeps the body working well. Drink more when it is hot or when you exercise.

Walking is a simple way to stay healthy. Even a short walk after a meal is good for you.

Bees carry pollen from flower to flower. This helps plants make fruit and seeds.

Trees give shade in summer and shelter to birds and insects. Their roots hold the soil in place.

Recycling paper, glass and metal saves energy and materials. Rinse bottles and cans before putting them in the bin.

A bicycle has two wheels, pedals and a chain. Riders should wear a helmet and use lights at night.

Before crossing a road, stop at the edge, look both ways and listen. Cross when the road is clear.

The heart is a muscle that pumps blood around the body. It beats faster when we run and slower when we rest.

Our bones give the body its shape and protect the organs inside. Calcium from milk, cheese and green vegetables keeps them strong.

Teeth should be brushed twice a day for two minutes. Change your toothbrush every three months.

Question: Why do leaves change colour in autumn? Answer: As the days get shorter, trees stop making green chlorophyll, and the yellow and red colours in the leaves show through.

Question: Why is the sky blue? Answer: Sunlight is scattered by the air, and blue light is scattered more than red light, so the sky looks blue.

Question: How many legs does a spider have? Answer: A spider has eight legs. Insects, such as ants and bees, have six.

Question: What should I do if my clothes catch fire? Answer: Stop, drop to the ground and roll to put out the flames. Then cool any burns with water.

Question: How can I tell if an egg is fresh? Answer: Put it in a bowl of water. A fresh egg sinks and lies flat; an old egg stands up or floats.

Question: How long should I rest a steak after cooking? Answer: Rest it for about five minutes so the juices settle before you cut it.

Question: What is the best way to store bread? Answer: Keep it in a cool, dry place in a paper bag or a bread box. Freeze it if you will not eat it within a few days.

Question: Can I swim during a thunderstorm? Answer: No. Get out of the water and find shelter inside a building until the storm has passed.

Question: What is a heatwave? Answer: A heatwave is a period of unusually hot weather that lasts several days. Drink water, stay in the shade and check on older neighbours.

Question: How do I treat a bee sting? Answer: Scrape the sting out with a fingernail or a card, wash the area and hold something cold on it. Get help fast if the person has trouble breathing.

Question: How many minutes are in an hour? Answer: There are sixty minutes in an hour and sixty seconds in a minute.

Question: What is the largest ocean? Answer: The Pacific Ocean is the largest and deepest ocean on earth.

Question: What do plants need to grow? Answer: Plants need light, water, air and nutrients from the soil.

Question: Why should I wear sunscreen on a cloudy day? Answer: Much of the sun's ultraviolet light passes through clouds, so skin can still burn.

Question: How do I keep a cut clean? Answer: Rinse it with clean water, pat it dry and cover it with a clean dressing. Change the dressing every day.

Question: What should be in an emergency kit at home? Answer: Water, food that keeps, a torch, spare batteries, a radio, a first aid kit, warm blankets and copies of important papers.

Question: How do I make tea? Answer: Boil fresh water, pour it over the tea and let it brew for three to five minutes. Add milk or lemon if you like.

Question: Why do we have seasons? Answer: The earth is tilted. As it travels around the sun, each half of the planet leans towards the sun for part of the year and away from it for the rest.

The library opens at nine in the morning and closes at six in the evening. On Sundays it is closed.

My grandmother keeps a small garden behind her house. She grows tomatoes, beans and lettuce, and she waters them every evening.

The train left the station on time. Through the window we watched fields, rivers and small villages pass by.

After the rain stopped, the children ran outside to jump in the puddles. The air smelled fresh and clean.

The baker starts work before sunrise. By seven o'clock the shop is full of warm loaves and the smell of fresh bread.

We packed sandwiches, apples and a bottle of water for the walk. At the top of the hill we sat down and ate lunch in the sun.

The old bridge crosses the river near the market. People stop there to watch the boats and feed the ducks.

On cold nights we light the fire and drink hot soup. The cat sleeps on the warm rug in front of it.

The teacher asked the class to write a short story about a journey. Some wrote about the sea, and others wrote about the mountains.

When the power went out, we found candles and a torch in the kitchen drawer. We played cards until the lights came back on.

A kind neighbour helped me carry my shopping up the stairs. I thanked her and offered her a cup of tea.

The museum has a room full of old clocks. Some of them still tick, and one plays a little tune every hour.

Spring brings new leaves and the first flowers. Birds build nests and the days grow longer.

In autumn the farmers bring in the harvest. Apples, pumpkins and potatoes fill the market stalls.

The lighthouse stands on the rocks at the end of the bay. Its light turns all night to warn ships away from the shore.

A thermometer measures temperature. A barometer measures air pressure, which helps people forecast the weather.

A compass needle points north because it lines up with the earth's magnetic field.

Salt dissolves in water, but sand does not. You can separate them by stirring, filtering and letting the water dry.

Ice floats because it is lighter than the same amount of liquid water. That is why lakes freeze from the top down.

Sound travels through air as waves. It moves even faster through water and through solid materials like wood and steel.

A healthy meal has vegetables, some protein such as beans, fish or eggs, and a whole grain such as brown rice or bread.

Leftover food should go in the fridge within two hours. Eat it within three days, and heat it until it is steaming hot.

If you feel dizzy in the heat, move to a cool place, sip water and rest. Loosen your clothes and cool your skin with a damp cloth.

Call for medical help if someone has chest pain, a sudden severe headache, weakness on one side of the body, or trouble speaking.

Do not move a person who may have hurt their neck or back, unless they are in danger. Keep them still and wait for help.

A cold pack helps a bruise in the first day. After that, gentle warmth can help the bruise fade.

Keep medicines in their labelled boxes and out of reach of children. Check the dates and return old medicines to a pharmacy.

If a child swallows something harmful, do not make them sick. Call for medical advice at once and keep the packet to show.

In a storm, stay indoors and away from windows. Unplug electrical devices and do not shelter under tall trees.

When driving in fog, slow down, use low beam headlights and leave more space between you and the car ahead.

On icy paths, take short steps and walk slowly. Wear shoes with a good grip and keep your hands free.

Before a long walk in the hills, check the weather forecast and tell someone where you are going and when you will be back.
"""


# (food, where to keep it, how long it keeps, one cooking tip)
_FOODS = [
    ("potatoes", "a cool, dark, dry place", "several weeks", "boil them in salted water until a knife slides in easily"),
    ("onions", "a cool, dry place with some air", "a month or more", "cook them slowly over low heat until they turn golden and sweet"),
    ("carrots", "the vegetable drawer of the fridge", "two to three weeks", "roast them with a little oil until the edges brown"),
    ("tomatoes", "a bowl on the kitchen table", "about a week", "add them to sauces near the end so they keep some freshness"),
    ("bananas", "a bowl at room temperature", "four to six days", "mash very ripe ones into pancake batter or bread"),
    ("apples", "the fridge", "four to six weeks", "bake them with cinnamon for a simple warm dessert"),
    ("milk", "the coldest part of the fridge", "a few days after opening", "warm it gently so it does not burn on the bottom of the pan"),
    ("cheese", "the fridge, wrapped in paper", "one to four weeks, depending on the kind", "grate hard cheese over pasta just before serving"),
    ("eggs", "the fridge", "three to five weeks", "crack them into a cup first so that no shell gets into the dish"),
    ("rice", "an airtight jar in the cupboard", "many months before cooking", "rinse it until the water runs clear before you cook it"),
    ("bread", "a bread box or a paper bag", "two to three days", "toast slices that have gone a little stale"),
    ("fish", "the coldest part of the fridge", "one to two days", "cook it until it flakes easily with a fork"),
    ("chicken", "the bottom shelf of the fridge", "one to two days", "cook it until the juices run clear and no pink remains"),
    ("lettuce", "the fridge in a bag with a dry paper towel", "about a week", "wash and dry the leaves well before dressing them"),
    ("lemons", "the fridge", "up to a month", "roll them on the table before cutting to get more juice"),
    ("flour", "an airtight container in a cool cupboard", "several months", "sift it before baking for a lighter cake"),
    ("butter", "the fridge", "a month or more", "let it soften at room temperature before creaming it with sugar"),
    ("beans", "a dry jar when uncooked", "a year or more", "soak dried beans overnight and then simmer them until soft"),
    ("mushrooms", "a paper bag in the fridge", "about a week", "wipe them clean instead of soaking them in water"),
    ("garlic", "a cool, dry, dark place", "several months", "add it to the pan late so it does not burn and turn bitter"),
    ("oranges", "a cool place or the fridge", "two to three weeks", "grate the peel into cakes for extra flavour"),
    ("spinach", "the fridge", "three to five days", "wilt it in a hot pan with a little garlic for one minute"),
    ("pasta", "a dry cupboard", "a year or more", "cook it in plenty of salted boiling water and stir it now and then"),
    ("honey", "a closed jar at room temperature", "years", "stir a spoonful into warm water with lemon for a soothing drink"),
]

_SINGULAR = {"milk", "cheese", "rice", "bread", "fish", "chicken", "lettuce", "flour", "butter", "garlic", "spinach",
             "pasta", "honey"}

# (weather, what it is like, what to wear or bring, one piece of advice)
_WEATHER = [
    ("a sunny day", "the sky is clear and the light is strong", "a hat, sunglasses and light clothes", "wear sunscreen and drink plenty of water"),
    ("a rainy day", "grey clouds cover the sky and the streets are wet", "a raincoat and boots", "drive slowly because roads are slippery"),
    ("a windy day", "trees bend and leaves blow across the ground", "a jacket that closes well", "keep away from old trees and loose fences"),
    ("a snowy day", "the ground is white and the air is cold", "a warm coat, gloves and a scarf", "clear the snow from paths before it turns to ice"),
    ("a foggy morning", "it is hard to see far ahead", "bright clothes so that drivers can see you", "use low beam lights when driving"),
    ("a hot afternoon", "the air feels heavy and the sun is high", "loose cotton clothes", "stay in the shade between noon and three o'clock"),
    ("a frosty night", "a thin layer of ice forms on grass and cars", "warm layers and a hat", "cover young plants to protect them from the cold"),
    ("a stormy evening", "thunder rolls and lightning flashes across the sky", "nothing special, because it is best to stay indoors", "keep away from windows and water"),
    ("a cloudy day", "the sun hides behind thick clouds", "a light sweater", "still wear sunscreen if you will be outside for long"),
    ("a humid day", "the air feels damp and sticky", "light, breathable clothes", "rest often if you are working outside"),
]

# (animal, where it lives, what it eats, one fact)
_ANIMALS = [
    ("The cat", "in homes all over the world", "meat and fish", "it sleeps for much of the day and hunts at dawn and dusk"),
    ("The dog", "with people in towns and on farms", "meat and dog food", "it has a very strong sense of smell"),
    ("The horse", "on farms and in open grassland", "grass, hay and oats", "it can sleep standing up"),
    ("The cow", "on farms and in fields", "grass and hay", "it has four parts to its stomach"),
    ("The owl", "in woods and old barns", "mice and insects", "it can turn its head a very long way around"),
    ("The frog", "near ponds, lakes and streams", "insects and worms", "it starts life as a tadpole that lives in water"),
    ("The bee", "in hives and nests", "nectar and pollen from flowers", "it tells other bees where flowers are by dancing"),
    ("The whale", "in the open ocean", "small fish and tiny sea creatures", "it breathes air through a hole on top of its head"),
    ("The penguin", "on cold coasts in the southern half of the world", "fish and krill", "it cannot fly, but it swims very well"),
    ("The camel", "in hot, dry deserts", "dry plants and grass", "it can go many days without drinking"),
    ("The squirrel", "in trees in parks and woods", "nuts, seeds and fruit", "it buries nuts in autumn to eat in winter"),
    ("The duck", "on rivers, lakes and ponds", "plants, seeds and small water animals", "its feathers are covered in oil that keeps it dry"),
    ("The elephant", "in forests and grasslands in Africa and Asia", "grass, leaves, bark and fruit", "it uses its trunk to drink, smell and pick things up"),
    ("The rabbit", "in burrows in fields and meadows", "grass and leafy plants", "its teeth never stop growing"),
    ("The salmon", "in the sea and in rivers", "insects and smaller fish", "it swims back up the river where it was born to lay its eggs"),
    ("The ant", "in nests under the ground", "seeds, sugar and other insects", "it can carry many times its own weight"),
]

# (country, capital, continent, language)
_PLACES = [
    ("France", "Paris", "Europe", "French"),
    ("Spain", "Madrid", "Europe", "Spanish"),
    ("Italy", "Rome", "Europe", "Italian"),
    ("Germany", "Berlin", "Europe", "German"),
    ("Portugal", "Lisbon", "Europe", "Portuguese"),
    ("Japan", "Tokyo", "Asia", "Japanese"),
    ("Egypt", "Cairo", "Africa", "Arabic"),
    ("Kenya", "Nairobi", "Africa", "Swahili and English"),
    ("Brazil", "Brasilia", "South America", "Portuguese"),
    ("Argentina", "Buenos Aires", "South America", "Spanish"),
    ("Canada", "Ottawa", "North America", "English and French"),
    ("Mexico", "Mexico City", "North America", "Spanish"),
    ("Australia", "Canberra", "Oceania", "English"),
    ("India", "New Delhi", "Asia", "Hindi, English and many others"),
    ("Norway", "Oslo", "Europe", "Norwegian"),
    ("Greece", "Athens", "Europe", "Greek"),
    ("Poland", "Warsaw", "Europe", "Polish"),
    ("Peru", "Lima", "South America", "Spanish and Quechua"),
]

# (problem, first step, second step, when to get help)
_FIRST_AID = [
    ("a small cut", "wash it under clean running water", "cover it with a clean plaster", "if it is deep, wide or will not stop bleeding"),
    ("a burn", "cool it under cool running water for ten minutes", "cover it loosely with cling film or a clean cloth", "if it is larger than the palm of the hand or the skin is charred"),
    ("a sprain", "rest the joint and raise it", "hold a wrapped cold pack on it for short periods", "if the person cannot put any weight on it"),
    ("a nosebleed", "sit up and lean forward", "pinch the soft part of the nose for ten minutes", "if the bleeding lasts longer than twenty minutes"),
    ("a bee sting", "scrape out the sting", "wash the area and cool it", "if the face swells or breathing becomes hard"),
    ("a splinter", "wash the skin around it", "pull it out gently with clean tweezers", "if it is deep or the area becomes red and painful"),
    ("heat exhaustion", "move the person to a cool place", "give them sips of water and cool their skin", "if they do not feel better within thirty minutes"),
    ("a bumped head", "sit the person down and hold a cold pack on the bump", "watch them closely for the next day", "if they are sleepy, confused or being sick"),
    ("a blister", "leave it unbroken if you can", "cover it with a soft dressing", "if it shows signs of infection such as pus or spreading redness"),
    ("mild hypothermia", "bring the person somewhere warm and dry", "wrap them in blankets and give a warm drink", "if they are confused or very drowsy"),
    ("something in the eye", "blink and let tears wash it out", "rinse the eye gently with clean water", "if it is stuck, sharp or the eye stays painful"),
    ("a dog bite", "wash the wound well with soap and water", "cover it with a clean dressing", "always, because bites can become infected"),
]

_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
            "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_COLOURS = [("grass", "green"), ("the sky on a clear day", "blue"), ("snow", "white"), ("a ripe banana", "yellow"),
            ("coal", "black"), ("a ripe strawberry", "red"), ("an orange", "orange"), ("a plum", "purple"),
            ("chocolate", "brown"), ("a lime", "green"), ("a flamingo", "pink"), ("a storm cloud", "dark grey")]


def _generated() -> list[str]:
    texts: list[str] = []
    for food, keep, lasts, tip in _FOODS:
        kept = "it lasts" if food in _SINGULAR else "they last"
        texts.append(f"Store {food} in {keep}. Kept this way {kept} {lasts}. A useful tip: {tip}.")
        texts.append(f"Question: Where should I keep {food}? Answer: The best place for {food} is {keep}.")
        texts.append(f"Question: Do you have a tip for cooking with {food}? Answer: Yes, {tip}.")
    for weather, like, wear, advice in _WEATHER:
        texts.append(f"On {weather}, {like}. It is a good idea to wear {wear}.")
        texts.append(f"Question: What should I do on {weather}? Answer: Wear {wear}, and {advice}.")
    for animal, home, food, fact in _ANIMALS:
        name = animal.lower().removeprefix("the ")
        texts.append(f"{animal} lives {home} and eats {food}. An interesting fact is that {fact}.")
        texts.append(f"Question: What does a {name} eat? Answer: A {name} eats {food}.")
        texts.append(f"Question: Where does a {name} live? Answer: A {name} lives {home}.")
    for country, capital, continent, language in _PLACES:
        texts.append(f"{capital} is the capital of {country}, a country in {continent}. People there speak {language}.")
        texts.append(f"Question: What is the capital of {country}? Answer: The capital of {country} is {capital}.")
        texts.append(f"Question: Which language is spoken in {country}? Answer: In {country} people speak {language}.")
    for problem, first, second, help_ in _FIRST_AID:
        texts.append(f"First aid for {problem}: first, {first}. Then {second}. Get medical help {help_}.")
        texts.append(f"Question: How do I treat {problem}? Answer: {first.capitalize()}, then {second}. "
                     f"See a doctor {help_}.")
    for a in range(1, 11):
        for b in (1, 2, 5):
            if a + b <= 20:
                texts.append(f"Question: What is {_NUMBERS[a]} plus {_NUMBERS[b]}? Answer: {_NUMBERS[a].capitalize()} "
                             f"plus {_NUMBERS[b]} is {_NUMBERS[a + b]}.")
        if a * 2 <= 20:
            texts.append(f"Two times {_NUMBERS[a]} is {_NUMBERS[a * 2]}, and {_NUMBERS[a * 2]} minus {_NUMBERS[a]} "
                         f"is {_NUMBERS[a]} again.")
    for i, day in enumerate(_DAYS):
        texts.append(f"Question: What day comes after {day}? Answer: The day after {day} is {_DAYS[(i + 1) % 7]}.")
    for i, month in enumerate(_MONTHS):
        texts.append(f"{month} is month number {i + 1} of the year. After {month} comes {_MONTHS[(i + 1) % 12]}.")
    for thing, colour in _COLOURS:
        texts.append(f"Question: What colour is {thing}? Answer: {thing[0].upper() + thing[1:]} is {colour}.")
    return texts


@cache
def _texts() -> tuple[str, ...]:
    written = [" ".join(p.split()) for p in _PARAGRAPHS.strip().split("\n\n")]
    return (*written, *_generated())


def builtin_texts() -> list[str]:
    """The built-in corpus: a fresh list of short paragraphs, the same on every call."""
    return list(_texts())
